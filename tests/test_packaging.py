"""The install is declared once and completely: pyproject.toml's dependencies are requirements.txt, its [test] extra
is requirements-dev.txt, and every third-party module the package imports comes from a declared distribution
(directly or through one), so `pip install .` gives a package that runs."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imported only on paths that say what to install: the PyTorch side (export verification, predictor on an exported
# folder, parity tests and benchmarks), the [test] extra, and the TensorBoard viewer.
OPTIONAL = {"torch": "torch", "pytest": "test"}


def _pyproject() -> dict:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _requirement_lines(name: str) -> list[str]:
  lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, name))]
  return [line for line in lines if line]


def _dist_name(requirement: str) -> str:
  return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_files_equal_pyproject():
  project = _pyproject()["project"]
  assert _requirement_lines("requirements.txt") == project["dependencies"]
  assert _requirement_lines("requirements-dev.txt") == [
    "-r requirements.txt",
    *project["optional-dependencies"]["test"],
  ]


def test_python_floor_is_the_same_everywhere():
  floor = _pyproject()["project"]["requires-python"]
  assert floor == ">=3.11"
  floors = {
    dist: re.sub(r"\.0$", "", md.metadata(dist).get("Requires-Python", "").replace(" ", ""))
    for dist in ("jax", "flax", "orbax-checkpoint", "numpy", "transformers")
  }  # what sets the floor
  assert set(floors.values()) == {">=3.11"}, floors
  assert "Python ≥ 3.11" in open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  assert (
    "(3, 11)" in open(os.path.join(ROOT, "Makefile")).read()
  )  # make stops early on an older interpreter


def _imported_top_level_modules() -> set[str]:
  names = set()
  for folder, _, files in os.walk(
    os.path.join(ROOT, "ecg_contrastive")
  ):  # bench/ declares its own needs
    for name in files:
      if name.endswith(".py"):
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
          elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
  return {n for n in names if n != "ecg_contrastive" and n not in sys.stdlib_module_names}


def _closure(requirements: list[str]) -> set[str]:
  """Distributions installed by `requirements`, following each one's own requirements (extras it names included)."""
  seen, todo = set(), [r for r in requirements]
  while todo:
    requirement = todo.pop()
    name = _dist_name(requirement)
    extras = (
      set(re.findall(r"\[([^\]]*)\]", requirement.split(";")[0])[0].split(","))
      if "[" in requirement
      else set()
    )
    if name in seen and not extras:
      continue
    seen.add(name)
    try:
      needs = md.requires(name) or []
    except md.PackageNotFoundError:
      continue
    for need in needs:
      marker = need.split(";", 1)[1] if ";" in need else ""
      wanted_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
      if wanted_extra and wanted_extra.group(1) not in extras:
        continue
      if "sys_platform" in marker and "linux" not in marker and "!=" not in marker:
        continue
      todo.append(need.split(";")[0])
  return seen


def test_every_imported_module_comes_from_a_declared_distribution():
  declared = _closure(_pyproject()["project"]["dependencies"])
  providers = md.packages_distributions()
  missing = {}
  for module in sorted(_imported_top_level_modules()):
    if module in OPTIONAL:
      continue
    dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
    assert dists, (
      f"module {module!r} is imported by ecg_contrastive but no installed distribution provides it"
    )
    if not dists & declared:
      missing[module] = sorted(dists)
  assert not missing, (
    f"imported but not declared in pyproject.toml dependencies (nor needed by one): {missing}"
  )
