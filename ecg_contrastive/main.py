r"""Command line: train + evaluate (default), evaluate a checkpoint, or export to PyTorch.

  python -m ecg_contrastive.main --config configs/default.py --workdir runs/demo
  python -m ecg_contrastive.main --mode eval --workdir runs/demo --config configs/default.py \
      --config.dataset=ptbxl --config.source_dir=/data/ptb-xl-1.0.3 --config.eval.label_set=ptbxl_superclass
  python -m ecg_contrastive.main --config configs/default.py --workdir runs/demo --config.batch_size=128
  python -m ecg_contrastive.main --workdir runs/demo --mode export --export_dir runs/demo/torch
  python -m ecg_contrastive.main --workdir runs/demo --mode label_set --export_dir runs/demo/torch \
      --config configs/default.py --config.eval.label_set=ptbxl_superclass
  python -m ecg_contrastive.main --workdir runs/demo --mode ood --config configs/default.py   # then export again

A user's mistake (errors.UserError: a bad config value or key, a missing or damaged file) is printed as one
line `error: ...` on stderr with exit code 2; so is a full disk, a read-only or forbidden folder (the file and
what to do); --verbose or ECG_CONTRASTIVE_TRACEBACK=1 shows the traceback.
"""

import difflib
import logging
import os
import runpy
import sys
from typing import NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging
from ml_collections import config_flags  # noqa: E402

from ecg_contrastive import paths  # noqa: E402
from ecg_contrastive.errors import ENVIRONMENT_ERRNOS, UserError, one_line, want_traceback  # noqa: E402

# Errors printed as one line: UserError and its subclasses (ConfigError, SourceError, RecordError, ExportError,
# ...), and a missing file (checkpoints.read_config, the text model's files). Extend here, or better: subclass
# UserError.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "A configs/*.py file, optionally with ':arg'.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tb/, eval/.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "export", "label_set", "ood"],
  "train: train and evaluate (resumes if the workdir has a checkpoint). eval: evaluate the workdir's "
  "checkpoint (--step, default newest) on the config's dataset, eval_splits and eval.label_set. "
  "export: write a PyTorch folder from the workdir's checkpoint. label_set: write the label set(s) of "
  "--config.eval.label_set into that folder (--export_dir, default WORKDIR/torch) for PyTorch-only scoring. "
  "ood: (re)compute the workdir's OOD reference (ood.json) for its checkpoint (--step, default newest) from the "
  "config's dataset and config.ood; export copies it.",
)
flags.DEFINE_string("export_dir", None, "Output folder for --mode export (default WORKDIR/torch).")
flags.DEFINE_integer("step", None, "Checkpoint step to export or evaluate (default: latest).")
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() first (multi-host; reads the "
  "coordinator from the environment: TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS etc.).",
)
flags.DEFINE_bool(
  "verbose", False, "Show the traceback of a user error too (as ECG_CONTRASTIVE_TRACEBACK=1)."
)
flags.mark_flag_as_required("workdir")


def fail(message: str) -> NoReturn:
  """`error: message` on stderr, exit code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_file(argv: list[str]) -> str | None:
  """The --config value of argv ('path' or 'path:arg'), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
  """(dotted key, the argument as given) of every --config.KEY=VALUE / --config.KEY VALUE in argv."""
  return [
    (arg[len("--config.") :].split("=", 1)[0], arg) for arg in argv if arg.startswith("--config.")
  ]


def unknown_key_message(config: ml_collections.ConfigDict, key: str, given: str) -> str | None:
  """If `key` (dotted) is not in config: a line naming it and the nearest known keys; else None."""
  node, path = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      prefix = "config." + "".join(p + "." for p in path)
      if not isinstance(node, ml_collections.ConfigDict):
        return (
          f"{given}: {prefix[:-1]} is a value, not a group of keys; set it as --{prefix[:-1]}=VALUE"
        )
      known = [prefix + k for k in node.keys()]
      near = difflib.get_close_matches(prefix + part, known, n=3, cutoff=0.6)
      hint = (
        f"did you mean {' or '.join(near)}?"
        if near
        else f"the keys there are {', '.join(sorted(known))}"
      )
      from ecg_contrastive.config_check import retired_key_message  # imports JAX: only on a mistake

      retired = retired_key_message(key)
      return f"{given}: unknown config key config.{key}; " + (f"{retired}" if retired else hint)
    node, path = node[part], path + [part]
  return None


def _explain_parse_error(argv: list[str], error: Exception) -> str:
  """One line for a command line that absl / ml_collections could not parse."""
  spec = _config_file(argv)
  if spec is not None:
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
      return (
        f"--config {spec}: no such file {path!r}; give a config file such as configs/default.py or "
        "configs/paper.py"
      )
    try:
      module = runpy.run_path(path)
      arg = spec.split(":", 1)[1] if ":" in spec else None
      config = module["get_config"](arg) if arg is not None else module["get_config"]()
    except (SyntaxError, KeyError) as e:
      return (
        f"--config {spec}: not a config file ({type(e).__name__}: {one_line(e)}); give a Python file that "
        "defines get_config(arg=None), such as configs/default.py"
      )
    except Exception as e:  # noqa: BLE001 (the config file itself fails: say so, naming it)
      return f"--config {spec}: {one_line(e)}"
    for key, given in _overrides(argv):
      message = unknown_key_message(config, key, given)
      if message:
        return message
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  message = lines[-1] if lines else one_line(error)
  if message.startswith("flag --config."):
    return f"{message}; give a value of the type the config file sets for that key"
  return f"{message}; see --helpshort for the flags"


def parse_flags(argv: list[str]) -> list[str]:
  """FLAGS(argv), with every command-line mistake (unknown flag or config key, bad value, missing config file)
  turned into one line `error: ...` and exit code 2."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("seed")  # a config file that failed to load raises here
    return rest
  except Exception as e:  # noqa: BLE001 (absl, ml_collections and the config file raise many kinds)
    if want_traceback(argv):
      raise
    fail(_explain_parse_error(argv, e))


def main(argv):
  try:
    run(argv)
  except USER_ERRORS as e:
    if _verbose():
      raise
    fail(one_line(e))
  except OSError as e:
    if e.errno not in ENVIRONMENT_ERRNOS or _verbose():
      raise
    fail(environment_message(e))


def _verbose() -> bool:
  return (FLAGS.is_parsed() and FLAGS.verbose) or want_traceback()


def environment_message(e: OSError) -> str:
  """'<file>: <reason>; <what to do>' for a full disk, a read-only or a forbidden folder."""
  where = f"{e.filename}: " if e.filename else ""
  return f"{where}{e.strerror or os.strerror(e.errno)}; {ENVIRONMENT_ERRNOS[e.errno]}"


def run(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
  logging.getLogger("ecg_contrastive").setLevel(logging.INFO)
  logging.basicConfig(
    level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
  )
  if FLAGS.distributed:
    from ecg_contrastive.sharding import init_distributed

    init_distributed()
  if FLAGS.mode == "export":
    from ecg_contrastive.export.to_torch import export

    out = export(
      FLAGS.workdir, FLAGS.export_dir or paths.join(FLAGS.workdir, "torch"), step=FLAGS.step
    )
    print(f"exported to {out}")
    return
  if FLAGS.config is None:
    fail(
      f"--config is required for --mode {FLAGS.mode}, e.g. --config configs/default.py (or --mode export)"
    )
  if os.path.isfile(FLAGS.workdir):
    fail(
      f"--workdir {FLAGS.workdir}: is a file; give a directory (created if absent) for the run's checkpoints"
    )
  from ecg_contrastive.config_check import check_config

  check_config(FLAGS.config)  # before JAX starts: a bad value fails in seconds
  if FLAGS.mode == "eval":
    from ecg_contrastive.eval_job import evaluate_checkpoint

    evaluate_checkpoint(FLAGS.config, FLAGS.workdir, step=FLAGS.step)
    return
  if FLAGS.mode == "label_set":
    from ecg_contrastive.eval_job import write_label_sets

    folder = FLAGS.export_dir or paths.join(FLAGS.workdir, "torch")
    for written in write_label_sets(FLAGS.config, FLAGS.workdir, folder, step=FLAGS.step):
      print(f"wrote {written}")
    return
  if FLAGS.mode == "ood":
    from ecg_contrastive.evals import ood

    written = ood.write_for_run(FLAGS.config, FLAGS.workdir, step=FLAGS.step)
    if not written:
      fail(
        "--mode ood with config.ood.bank_size=0 writes nothing; give e.g. --config.ood.bank_size=4096"
      )
    for path in written:
      print(f"wrote {path}")
    return
  from ecg_contrastive.train import train_and_evaluate

  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
