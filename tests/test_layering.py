"""The import layering of the ecg_contrastive package (docs/architecture.md, "Layers").

Every module is read with `ast` (nothing is imported): module-level and function-level imports, `import x` and
`from x import y`, relative imports resolved, `if TYPE_CHECKING:` imports included. `from pkg import name` where
`pkg.name` is a module counts as importing that module; otherwise it counts as importing `pkg`. Importing
`a.b.c` counts as importing `a.b.c` only, not the `__init__` of `a` and `a.b` that Python also runs (counting
those would make every module of a package with a non-empty `__init__` part of a cycle).

Three checks: no import cycle between modules; every import of our own code allowed by LAYERS; no module imports
`bench`, `configs` or `tests` (they sit outside the library and are not installed with it).
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import pathlib

PACKAGE = "ecg_contrastive"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
OUTSIDE_THE_LIBRARY = ("bench", "configs", "tests")


@dataclasses.dataclass(frozen=True)
class Rule:
  """A layer: the modules it covers and the layers they may import (a module may always import its own layer).

  modules: globs of module names relative to the package ("__init__" is the package's own __init__.py; a
  sub-package's __init__.py is the sub-package's name). may_import: rule names, or AnyExcept(...).
  """

  name: str
  modules: tuple[str, ...]
  may_import: tuple[str, ...] | AnyExcept


@dataclasses.dataclass(frozen=True)
class AnyExcept:
  """Any rule of the table except these (and except nothing else)."""

  names: tuple[str, ...] = ()


_DATA_BASE = ("errors", "paths", "sharding", "ecg", "vocab")
_DATA = ("data", "data.cache", "data.builders", "data.synthetic")

# The layer table, bottom to top. Keep docs/architecture.md in step with it.
LAYERS = (
  Rule("root", ("__init__",), ()),
  Rule("errors", ("errors",), ()),
  Rule("paths", ("paths",), ("errors",)),
  Rule("sharding", ("sharding",), ("errors", "paths")),
  Rule("preemption", ("preemption",), ("errors", "paths")),
  Rule("workdir_lock", ("workdir_lock",), ("errors", "paths")),
  Rule("metric_writer", ("metric_writer",), ("errors", "paths")),
  Rule("ecg", ("ecg", "ecg.*"), ("errors",)),
  Rule("vocab", ("vocab", "vocab.*"), ("errors",)),
  Rule("models", ("models", "models.*"), ("errors",)),
  Rule("losses", ("losses", "tiled_losses"), ("sharding",)),
  Rule("text", ("text", "text.*"), ("errors", "paths", "sharding", "models", "vocab")),
  # data: the simulator and the int16 cache import nothing else of data; the TFDS builders may use both; the
  # streamed source sits on the cache; the pipeline, the batch iterator and the prepare command on top of all.
  Rule("data.synthetic", ("data.synthetic", "data.synthetic.*"), _DATA_BASE),
  Rule("data.cache", ("data.cache",), _DATA_BASE),
  # shards read as batches need them (host_read="stream"), indexed by the cache's own scan
  Rule("data.streaming", ("data.streaming",), _DATA_BASE + ("data.cache",)),
  Rule(
    "data.builders",
    ("data.builders", "data.builders.*"),
    _DATA_BASE + ("data.synthetic", "data.cache"),
  ),
  Rule(
    "data",
    ("data", "data.batches", "data.pipeline", "data.prepare", "data.resident", "data.placement"),
    _DATA_BASE + ("data.synthetic", "data.cache", "data.streaming", "data.builders"),
  ),
  Rule("step", ("step",), ("models", "ecg", "losses", "sharding", "errors")),
  Rule("checkpoints", ("checkpoints",), ("models", "paths", "errors", "vocab")),
  Rule(
    "evals",
    # evals.independent's check and command sit above eval_job (their own rule below)
    ("evals", "evals.[!i]*", "evals.independent", "evals.independent.simulate"),
    # checkpoints: evals/reduced_leads evaluates a workdir's saved model
    ("step", "models", "text", "sharding", "paths", "errors", "vocab", "checkpoints", "ecg")
    + _DATA,
  ),
  Rule(
    "export", ("export", "export.*"), ("ecg", "models", "checkpoints", "paths", "errors", "vocab")
  ),
  Rule("config_check", ("config_check",), AnyExcept(("train", "main", "evals", "export"))),
  Rule("train", ("train",), AnyExcept(("main", "export"))),
  Rule("eval_job", ("eval_job",), AnyExcept(("main", "export", "train", "sweep"))),
  Rule(
    "evals.independent.check",  # the independent check evaluates a workdir through --mode eval's own code
    ("evals.independent.check", "evals.independent.__main__"),
    AnyExcept(("main", "export", "train", "sweep")),
  ),
  Rule("sweep", ("sweep",), AnyExcept(("export",))),
  Rule("main", ("main",), AnyExcept()),
)


@dataclasses.dataclass(frozen=True)
class Import:
  file: str  # relative to the folder above the package, e.g. ecg_contrastive/step.py
  line: int
  importer: str  # dotted module names
  imported: str  # our module, or the top-level name of an outside import


def modules_of(package_dir: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py under package_dir."""
  found = {}
  for path in sorted(package_dir.rglob("*.py")):
    parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  return found


def imports_in(
  package_dir: pathlib.Path, package: str
) -> tuple[dict[str, pathlib.Path], list[Import]]:
  """Every module of the package and every import in it (ours resolved to a module; others: top-level name)."""
  modules = modules_of(package_dir, package)
  found = []
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    file = path.relative_to(package_dir.parent).as_posix()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [_ours(alias.name, modules, package) for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          here = name.split(".") if is_package else name.split(".")[:-1]
          here = here[: len(here) - (node.level - 1)]
          base = ".".join(here + ([node.module] if node.module else []))
        else:
          base = node.module
        for alias in node.names:
          sub = f"{base}.{alias.name}"
          targets.append(sub if sub in modules else _ours(base, modules, package))
      for target in targets:
        if target != name:
          found.append(Import(file, node.lineno, name, target))
  return modules, list(
    dict.fromkeys(found)
  )  # one per (line, module): `from x import a, b` is one import of x


def _ours(name: str, modules: dict[str, pathlib.Path], package: str) -> str:
  """Our deepest module that `name` names (a.b.c -> a.b.c, or a.b when c is an attribute); else its top level."""
  if name.split(".")[0] != package:
    return name.split(".")[0]
  parts = name.split(".")
  while parts and ".".join(parts) not in modules:
    parts.pop()
  return ".".join(parts) if parts else name


def rule_of(module: str, package: str, rules: tuple[Rule, ...]) -> list[Rule]:
  relative = module[len(package) + 1 :] if module != package else "__init__"
  return [
    rule for rule in rules if any(fnmatch.fnmatchcase(relative, glob) for glob in rule.modules)
  ]


def unlisted_modules(
  modules, package_dir: pathlib.Path, package: str, rules: tuple[Rule, ...]
) -> list[str]:
  problems = []
  for module, path in modules.items():
    matched = rule_of(module, package, rules)
    if len(matched) != 1:
      problems.append(
        f"{path.relative_to(package_dir.parent).as_posix()}: "
        f"module {module} falls under {len(matched)} rules of the layer table "
        f"({', '.join(r.name for r in matched) or 'none'}); add it to exactly one rule of LAYERS in "
        f"tests/test_layering.py (and to docs/architecture.md)"
      )
  return problems


def layer_violations(
  imports: list[Import], modules, package: str, rules: tuple[Rule, ...]
) -> list[str]:
  names = {rule.name for rule in rules}
  problems = []
  for imp in imports:
    if imp.imported not in modules:
      continue  # outside the package: forbidden_imports' business
    importer, imported = (
      rule_of(imp.importer, package, rules),
      rule_of(imp.imported, package, rules),
    )
    if len(importer) != 1 or len(imported) != 1:
      continue  # unlisted_modules reports it
    (importer,), (imported,) = importer, imported
    if isinstance(importer.may_import, AnyExcept):
      allowed = names - set(importer.may_import.names)
      said = "anything" + (
        f" except {', '.join(importer.may_import.names)}" if importer.may_import.names else ""
      )
    else:
      allowed = set(importer.may_import)
      said = ", ".join(importer.may_import) or "nothing of the package"
    if imported.name != importer.name and imported.name not in allowed:
      problems.append(
        f"{imp.file}:{imp.line}: {imp.importer} imports {imp.imported} (layer {imported.name}); "
        f"rule {importer.name} may import {said} (+ its own layer)"
      )
  return problems


def forbidden_imports(imports: list[Import], outside=OUTSIDE_THE_LIBRARY) -> list[str]:
  return [
    f"{imp.file}:{imp.line}: {imp.importer} imports {imp.imported}; rule: the library never imports "
    f"{', '.join(outside)} (they are not part of the installed package)"
    for imp in imports
    if imp.imported in outside
  ]


def import_cycles(imports: list[Import]) -> list[str]:
  """One message per strongly connected component of the import graph: a cycle through it, edge by edge."""
  graph: dict[str, dict[str, Import]] = {}
  for imp in imports:
    graph.setdefault(imp.importer, {}).setdefault(
      imp.imported, imp
    )  # first import of a pair (ast.walk order)
  components = _strongly_connected(graph)
  problems = []
  for component in components:
    if len(component) < 2:
      continue
    start = min(component)
    path = _path_back(graph, start, component)
    edges = [graph[a][b] for a, b in zip(path, path[1:])]
    problems.append(
      "import cycle (rule: no cycles; modules in it: "
      + ", ".join(sorted(component))
      + "): "
      + " -> ".join([start] + [f"{e.imported} ({e.file}:{e.line})" for e in edges])
    )
  return sorted(problems)


def _strongly_connected(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
  """Tarjan's algorithm, iterative."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []
  nodes = sorted(set(graph) | {b for targets in graph.values() for b in targets})
  for root in nodes:
    if root in index:
      continue
    work = [(root, iter(sorted(graph.get(root, {}))))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, {})))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = set()
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.add(member)
          if member == node:
            break
        components.append(component)
  return components


def _path_back(graph, start: str, component: set[str]) -> list[str]:
  """Shortest path start -> ... -> start inside the component (breadth first)."""
  previous, frontier = {}, [start]
  while frontier:
    following = []
    for node in frontier:
      for child in sorted(graph.get(node, {})):
        if child not in component:
          continue
        if child == start:
          path = [node]
          while path[-1] != start:
            path.append(previous[path[-1]])
          return path[::-1] + [start]
        if child not in previous:
          previous[child] = node
          following.append(child)
    frontier = following
  raise AssertionError(f"no cycle through {start}")


def check(package_dir: pathlib.Path, package: str, rules: tuple[Rule, ...]) -> dict[str, list[str]]:
  modules, imports = imports_in(package_dir, package)
  return {
    "unlisted": unlisted_modules(modules, package_dir, package, rules),
    "cycles": import_cycles(imports),
    "layers": layer_violations(imports, modules, package, rules),
    "outside": forbidden_imports(imports),
  }


def _report(problems: list[str], what: str) -> str:
  text = f"{len(problems)} {what}:\n  " + "\n  ".join(problems)
  print(text)
  return text


_FOUND = None


def _found() -> dict[str, list[str]]:
  global _FOUND
  if _FOUND is None:
    _FOUND = check(PACKAGE_DIR, PACKAGE, LAYERS)
  return _FOUND


def test_layer_table_is_consistent():
  names = [rule.name for rule in LAYERS]
  assert len(names) == len(set(names)), "rule names repeat in LAYERS"
  for rule in LAYERS:
    listed = rule.may_import.names if isinstance(rule.may_import, AnyExcept) else rule.may_import
    unknown = set(listed) - set(names)
    assert not unknown, f"rule {rule.name} names rules that LAYERS does not have: {sorted(unknown)}"


def test_every_module_falls_under_one_rule():
  problems = _found()["unlisted"]
  assert not problems, _report(problems, "modules not under exactly one rule")


def test_no_import_cycles():
  problems = _found()["cycles"]
  assert not problems, _report(problems, "import cycles")


def test_imports_follow_the_layer_table():
  problems = _found()["layers"]
  assert not problems, _report(problems, "imports against the layer table")


def test_library_never_imports_bench_configs_or_tests():
  problems = _found()["outside"]
  assert not problems, _report(problems, "imports from outside the library")


def test_checker_catches_a_planted_cycle_and_forbidden_imports(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  files = {
    "__init__.py": "",
    "low.py": "import os\n",
    "a.py": "def f():\n  from pkg import b\n",  # a -> b (function level) -> c -> a
    "b.py": "from . import c\n",
    "c.py": "from pkg.a import f\n",
    "sub/__init__.py": "",
    "sub/x.py": "from ..a import f\n",  # the low layer importing upwards
    "sub/y.py": "import bench.run\nfrom configs import default\n",
    "new.py": "",  # under no rule
  }
  for name, text in files.items():
    (pkg / name).write_text(text)
  rules = (
    Rule("root", ("__init__",), ()),
    Rule("low", ("low", "sub", "sub.*"), ()),
    Rule("high", ("a", "b", "c"), ("low",)),
  )
  found = check(pkg, "pkg", rules)
  assert found["unlisted"] == [
    "pkg/new.py: module pkg.new falls under 0 rules of the layer table (none); add it to exactly one rule of "
    "LAYERS in tests/test_layering.py (and to docs/architecture.md)"
  ]
  assert found["cycles"] == [
    "import cycle (rule: no cycles; modules in it: pkg.a, pkg.b, pkg.c): "
    "pkg.a -> pkg.b (pkg/a.py:2) -> pkg.c (pkg/b.py:1) -> pkg.a (pkg/c.py:1)"
  ]
  assert found["layers"] == [
    "pkg/sub/x.py:1: pkg.sub.x imports pkg.a (layer high); rule low may import nothing of the package "
    "(+ its own layer)"
  ]
  assert found["outside"] == [
    "pkg/sub/y.py:1: pkg.sub.y imports bench; rule: the library never imports bench, configs, tests "
    "(they are not part of the installed package)",
    "pkg/sub/y.py:2: pkg.sub.y imports configs; rule: the library never imports bench, configs, tests "
    "(they are not part of the installed package)",
  ]
