"""bench/fetch_wheels.sh carries what the device image lacks: the benchmark imports nothing else.

The first GPU run lost its pipeline phase to a missing `wfdb` (the real-data builders had added it to the
requirements, not to the wheels). These tests would have caught it here, on CPU.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wheel_script_names() -> list[str]:
  out = subprocess.run(
    ["bash", "bench/fetch_wheels.sh", "--names"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return out.split()


def requirement_names() -> list[str]:
  names = []
  with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line:
        names.append(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0])
  return names


def script_array(name: str) -> list[str]:
  with open(os.path.join(ROOT, "bench", "fetch_wheels.sh"), encoding="utf-8") as f:
    text = f.read()
  body = re.search(rf"^{name}=\((.*?)\)", text, re.S | re.M).group(1)
  return [w.split("==")[0] for w in re.sub(r"#[^\n]*", "", body).split()]


def test_every_requirement_is_in_the_image_carried_or_never_imported_by_the_benchmark():
  known = {n.lower() for n in wheel_script_names()}
  missing = [n for n in requirement_names() if n.lower() not in known]
  assert not missing, (
    f"add {missing} to bench/fetch_wheels.sh (IMAGE, NOT_IMPORTED, STEP or PIPELINE)"
  )
  assert "wfdb" in script_array("PIPELINE")


@pytest.mark.slow
def test_the_benchmark_imports_with_the_never_imported_requirements_blocked():
  blocked = [n.replace("-", "_") for n in script_array("NOT_IMPORTED")]  # their import names
  assert blocked == ["fugashi", "unidic_lite", "tensorboardX"]
  code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ImportError("blocked as on the device image: " + name)
sys.meta_path.insert(0, Block())
import bench.step, bench.input_path, bench.loss_memory
import ecg_contrastive.train, ecg_contrastive.data.pipeline, ecg_contrastive.data.builders
import ecg_contrastive.ecg.reader
print("imported")
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]

  code_blocking_wfdb = code.replace(repr(blocked), repr(blocked + ["wfdb"]))
  result = subprocess.run(
    [sys.executable, "-c", code_blocking_wfdb], cwd=ROOT, capture_output=True, text=True
  )
  assert (
    result.returncode != 0 and "blocked as on the device image: wfdb" in result.stderr
  )  # the check bites
