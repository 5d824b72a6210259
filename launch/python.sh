# Sourced by the launchers: sets PYTHON to the interpreter that has this project's packages, the first of
#   $PYTHON (set it to be explicit, e.g. PYTHON=$(which python)); the active virtual environment ($VIRTUAL_ENV);
#   the repository's .venv (what `make setup` creates); python3 on PATH.
# A launcher must never fall back to a bare `python` that lacks the packages ("No module named 'absl'").
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PYTHON=$VIRTUAL_ENV/bin/python
  elif [ -x "$_repo/.venv/bin/python" ]; then PYTHON=$_repo/.venv/bin/python
  else PYTHON=$(command -v python3 || true)
  fi
fi
# The repository on the path, so that `-m ecg_contrastive.main` works from any directory without an install.
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import ecg_contrastive, absl, jax" 2>/dev/null; then
  echo "error: ${PYTHON:-no python3 on PATH} cannot import ecg_contrastive, absl and jax; run \`make setup\` (creates" \
       ".venv) or set PYTHON=/path/to/python of an environment with requirements.txt installed" >&2
  exit 2
fi
export PYTHON
