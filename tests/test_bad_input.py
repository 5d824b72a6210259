"""Users' bad files: the predictor, the record reader and the text model name the file and say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import wfdb

from ecg_contrastive.ecg import preprocess, reader, signal
from ecg_contrastive.errors import UserError
from ecg_contrastive.export import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(signal.LEADS)


def ecg_like(seconds: float, rate: float, seed: int = 0) -> np.ndarray:
  """(T, 12) mV: a few sines per lead, amplitude ~1 mV."""
  t = np.arange(int(seconds * rate))[:, None] / rate
  phase = np.random.default_rng(seed).uniform(0, 6, (1, 12))
  return np.sin(2 * np.pi * 1.2 * t + phase) + 0.3 * np.sin(2 * np.pi * 7 * t + 2 * phase)


def write_wfdb(
  folder, name: str = "rec", seconds: float = 10.0, rate: int = 500, values=None
) -> str:
  values = ecg_like(seconds, rate) if values is None else values
  wfdb.wrsamp(
    name,
    fs=rate,
    units=["mV"] * 12,
    sig_name=NAMES,
    p_signal=values,
    fmt=["16"] * 12,
    write_dir=str(folder),
  )
  return os.path.join(str(folder), name)


def save_npy(folder, name: str, array) -> str:
  path = os.path.join(str(folder), name)
  np.save(path, array)
  return path


def truncated_wfdb(folder) -> str:
  base = write_wfdb(folder)
  with open(base + ".dat", "r+b") as f:
    f.truncate(1000)
  return base


def garbage_header(folder) -> str:
  base = write_wfdb(folder)
  with open(base + ".hea", "w") as f:
    f.write("this is not a WFDB header\n")
  return base


def zero_byte_npy(folder) -> str:
  path = os.path.join(str(folder), "empty.npy")
  open(path, "wb").close()
  return path


def corrupt_npy(folder) -> str:
  path = os.path.join(str(folder), "corrupt.npy")
  with open(path, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00garbage")
  return path


def wfdb_with_units(folder, units: str) -> str:
  base = write_wfdb(folder)
  with open(base + ".hea") as f:
    text = f.read()
  with open(base + ".hea", "w") as f:
    f.write(text.replace("/mV", f"/{units}"))
  return base


def wfdb_with_rate(folder, rate: float) -> str:
  base = write_wfdb(folder)
  with open(base + ".hea") as f:
    lines = f.read().splitlines()
  first = lines[0].split()
  first[2] = repr(rate)
  lines[0] = " ".join(first)
  with open(base + ".hea", "w") as f:
    f.write("\n".join(lines) + "\n")
  return base


# (case id, writes the file and returns (path, --fs); the message must contain each of `says`)
NPY = 500.0
BAD_RECORDS = {
  "missing-npy": (
    lambda d: (os.path.join(str(d), "nope.npy"), NPY),
    ["missing file", "nope.npy", "check the path"],
  ),
  "missing-wfdb": (
    lambda d: (os.path.join(str(d), "nope"), None),
    ["missing file", "nope.hea", "give a WFDB record"],
  ),
  "missing-dat": (
    lambda d: (_without_dat(d), None),
    ["missing file", "rec.dat", "copy the record's signal file"],
  ),
  "truncated-dat": (
    lambda d: (truncated_wfdb(d), None),
    ["truncated file", "rec.dat", "download the record again"],
  ),
  "garbage-header": (
    lambda d: (garbage_header(d), None),
    ["unreadable", "rec.hea", "not a WFDB header"],
  ),
  "header-units": (
    lambda d: (wfdb_with_units(d, "kg"), None),
    ["unreadable", "rec.hea", "units 'kg'", "mV, uV"],
  ),
  "zero-byte-npy": (lambda d: (zero_byte_npy(d), NPY), ["unreadable", "empty.npy", "numpy.save"]),
  "corrupt-npy": (lambda d: (corrupt_npy(d), NPY), ["unreadable", "corrupt.npy", "numpy.save"]),
  "pickled-npy": (
    lambda d: (save_npy(d, "obj.npy", np.array([{"a": 1}], dtype=object)), NPY),
    ["unreadable", "obj.npy", "numpy.save"],
  ),
  "string-npy": (
    lambda d: (save_npy(d, "s.npy", np.array(["a", "b"])), NPY),
    ["s.npy", "int or float array"],
  ),
  "3d-npy": (
    lambda d: (save_npy(d, "3d.npy", np.zeros((2, 5000, 12))), NPY),
    ["3d.npy", "shape (2, 5000, 12)", "(samples, leads)", "--leads"],
  ),
  "7-lead-npy": (
    lambda d: (save_npy(d, "7.npy", ecg_like(10, 500)[:, :7]), NPY),
    ["7.npy", "shape (5000, 7)"],
  ),
  "nan-samples": (
    lambda d: (save_npy(d, "nan.npy", _with(ecg_like(10, 500), np.nan)), NPY),
    ["nan.npy", "NaN/inf", "lead 'aVR'", "fill or drop the gaps"],
  ),
  "inf-samples": (
    lambda d: (save_npy(d, "inf.npy", _with(ecg_like(10, 500), np.inf)), NPY),
    ["inf.npy", "NaN/inf"],
  ),
  "beyond-int16": (
    lambda d: (save_npy(d, "big.npy", ecg_like(10, 500) * 1e5), NPY),
    ["big.npy", "beyond the int16 range", "check the units"],
  ),
  "all-zero": (
    lambda d: (save_npy(d, "zero.npy", np.zeros((5000, 12), np.int16)), NPY),
    ["flat signal", "zero.npy", "no findings", "check the file and its units"],
  ),
  "constant": (
    lambda d: (save_npy(d, "const.npy", np.full((5000, 12), 300, np.int16)), NPY),
    ["flat signal"],
  ),
  "0.02-s": (
    lambda d: (save_npy(d, "short.npy", ecg_like(0.02, 500) * 1000), NPY),
    ["too short", "short.npy", "0.02 s", "at least 5 s"],
  ),
  "4.9-s-wfdb": (lambda d: (write_wfdb(d, seconds=4.9), None), ["too short", "rec", "4.90 s"]),
  "fs-nan": (
    lambda d: (save_npy(d, "a.npy", ecg_like(10, 500) * 1000), float("nan")),
    ["bad rate", "a.npy", "nan", "--fs", "between 50 and 20000 Hz"],
  ),
  "fs-0": (
    lambda d: (save_npy(d, "a.npy", ecg_like(10, 500) * 1000), 0.0),
    ["bad rate", "a.npy", "--fs"],
  ),
  "fs-negative": (
    lambda d: (save_npy(d, "a.npy", ecg_like(10, 500) * 1000), -500.0),
    ["bad rate", "a.npy"],
  ),
  "fs-0.001": (
    lambda d: (save_npy(d, "a.npy", ecg_like(10, 500) * 1000), 0.001),
    ["bad rate", "0.001"],
  ),
  "fs-1e9": (
    lambda d: (save_npy(d, "a.npy", ecg_like(10, 500) * 1000), 1e9),
    ["bad rate", "1000000000.0"],
  ),
  "header-fs-0.001": (lambda d: (wfdb_with_rate(d, 0.001), None), ["bad rate", "rec.hea", "0.001"]),
  "header-fs-1e9": (lambda d: (wfdb_with_rate(d, 1e9), None), ["bad rate", "rec.hea"]),
}


def _without_dat(folder) -> str:
  base = write_wfdb(folder)
  os.remove(base + ".dat")
  return base


def _with(values, bad):
  values = values * 1000
  values[100, 3] = bad
  return values


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_predictor_refuses_bad_record_naming_file(case, tmp_path):
  make, says = BAD_RECORDS[case]
  path, fs = make(tmp_path)
  with pytest.raises(preprocess.BadRecordError) as info:
    preprocess.read_record(path, fs, "uV" if fs is not None else None, None)
  assert isinstance(info.value, UserError) and "\n" not in str(info.value)
  for part in says:
    assert part in str(info.value), str(info.value)


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_record_reader_lists_bad_record_with_reason(case, tmp_path):
  """Dataset building: the same files are skipped with their reason (read_many never raises)."""
  make, says = BAD_RECORDS[case]
  path, fs = make(tmp_path)
  fs = 500.0 if fs is None and path.endswith(".npy") else fs
  [reason] = reader.read_many([(path, fs, "uV" if path.endswith(".npy") else None)])
  assert isinstance(reason, str), f"{case} was accepted"
  assert reason.split(":")[0] in (
    "missing file",
    "truncated file",
    "unreadable",
    "bad rate",
    "bad signal",
    "too short",
    "flat signal",
  ), reason
  for part in says[:1]:
    assert part in reason, reason


def predict_cli(args, capsys) -> tuple[int, list[str]]:
  with pytest.raises(SystemExit) as info:
    predict.main(args)
  return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
  "case", ["truncated-dat", "zero-byte-npy", "all-zero", "fs-0.001", "3d-npy"]
)
def test_predictor_command_line_is_one_line_exit_2(case, tmp_path, capsys):
  make, says = BAD_RECORDS[case]
  path, fs = make(tmp_path)
  args = (
    ["--workdir", str(tmp_path / "no-run")]
    + (["--fs", repr(fs), "--units", "uV"] if fs else [])
    + [path]
  )
  code, err = predict_cli(args, capsys)
  assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says[0] in err[0], err


@pytest.mark.slow
def test_predictor_subprocess_fs_nan_is_one_line(tmp_path):
  path = save_npy(tmp_path, "a.npy", ecg_like(10, 500) * 1000)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "ecg_contrastive.export.predict",
      "--workdir",
      str(tmp_path),
      "--fs",
      "nan",
      "--units",
      "uV",
      path,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = result.stderr.strip().splitlines()
  assert (
    result.returncode == 2 and lines == [lines[0]] and "bad rate" in lines[0] and path in lines[0]
  )


def test_predictor_bad_model_paths_are_one_line(tmp_path, capsys):
  path = save_npy(tmp_path, "a.npy", ecg_like(10, 500) * 1000)
  common = ["--fs", "500", "--units", "uV", path]
  code, err = predict_cli(["--workdir", str(tmp_path / "none")] + common, capsys)
  assert (
    code == 2
    and len(err) == 1
    and "config.json not found" in err[0]
    and "not a training workdir" in err[0]
  )
  code, err = predict_cli(["--exported", str(tmp_path / "none")] + common, capsys)
  assert (
    code == 2 and len(err) == 1 and "not an export folder" in err[0] and "--mode export" in err[0]
  )


def test_predictor_top_k_must_be_positive(tmp_path, capsys):
  code, err = predict_cli(["--workdir", str(tmp_path), "--top-k", "0", "x.npy"], capsys)
  assert code == 2 and "--top-k 0" in err[-1]


def test_short_record_is_padded_with_a_warning(tmp_path, capsys):
  """5-10 s: zero-padded to 10 s, said on stderr before the model is opened."""
  path = save_npy(tmp_path, "seven.npy", ecg_like(7, 500) * 1000)
  record = preprocess.read_record(path, 500.0, "uV")
  assert record.duration_s == 7.0 and record.ecg[3500:].any() == False and record.ecg[:3500].any()  # noqa: E712
  code, err = predict_cli(
    ["--workdir", str(tmp_path / "none"), "--fs", "500", "--units", "uV", path], capsys
  )
  assert (
    err[0]
    == f"warning: {path}: 7.00 s, zero-padded to 10 s; findings of a short record are less reliable"
  )


def test_long_record_reads_only_what_it_needs(tmp_path):
  """An hour at 360 Hz: only the first 60 s are resampled; the first 10 s match resampling the whole record."""
  values = np.tile(ecg_like(10, 360), (360, 1))  # 3600 s
  path = save_npy(tmp_path, "hour.npy", values * 1000)
  record = preprocess.read_record(path, 360.0, "uV")
  short = preprocess.read_record(
    save_npy(tmp_path, "head.npy", values[: 360 * 120] * 1000), 360.0, "uV"
  )
  assert record.duration_s == 3600.0
  np.testing.assert_array_equal(record.ecg, short.ecg)


def test_lead_count_mapped_by_names(tmp_path):
  """8 leads (I, II, V1-V6) named with --leads: the limb leads are derived; a lead neither given nor derivable is
  named."""
  values = ecg_like(10, 500) * 1000
  eight = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
  cols = [NAMES.index(n) for n in eight]
  record = preprocess.read_record(save_npy(tmp_path, "e.npy", values[:, cols]), 500.0, "uV", eight)
  lead_iii = record.ecg[:, 1] - record.ecg[:, 0]
  assert record.ecg.shape == (5000, 12) and np.abs(record.ecg[:, 2] - lead_iii).max() < 2e-3
  ten = [n for n in NAMES if n not in ("V3", "V6")]
  with pytest.raises(preprocess.BadRecordError, match=r"m\.npy: missing lead\(s\) \['V3', 'V6'\]"):
    preprocess.read_record(
      save_npy(tmp_path, "m.npy", values[:, [NAMES.index(n) for n in ten]]), 500.0, "uV", ten
    )
  with pytest.raises(
    preprocess.BadRecordError, match=r"x\.npy \(--leads\): 'X': unknown lead name"
  ):
    preprocess.read_record(
      save_npy(tmp_path, "x.npy", values[:, :11]), 500.0, "uV", NAMES[:10] + ["X"]
    )


# ----------------------------------------------------------------------------- text model


@pytest.fixture()
def standin_dir(tmp_path):
  from ecg_contrastive.text.standin import write_standin_model

  return write_standin_model(str(tmp_path / "model"), hidden_size=16, num_layers=1, num_heads=2)


def test_standin_loads(standin_dir):
  from ecg_contrastive.models.bert import load_hf_encoder
  from ecg_contrastive.text.tokenizer import load_tokenizer

  load_hf_encoder(standin_dir)
  load_tokenizer(standin_dir)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _overwrite(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


@pytest.mark.parametrize(
  "damage, file, says",
  [
    (_truncate, "model.safetensors", "unreadable safetensors file"),
    (lambda p: _overwrite(p, b"\x00" * 64), "model.safetensors", "unreadable safetensors file"),
    (lambda p: _overwrite(p, b"{not json"), "config.json", "not valid JSON"),
    (lambda p: _overwrite(p, b"\xff\xfe\x00"), "config.json", "not valid JSON"),
    (lambda p: _overwrite(p, b"[1, 2]"), "config.json", "not a JSON object"),
    (
      lambda p: _overwrite(p, json.dumps({"model_type": "bert"}).encode()),
      "config.json",
      "missing field",
    ),
    (
      lambda p: _overwrite(p, json.dumps({"model_type": "gpt2"}).encode()),
      "config.json",
      "is not a BERT-family encoder",
    ),
  ],
  ids=[
    "truncated-safetensors",
    "garbage-safetensors",
    "config-not-json",
    "config-not-utf8",
    "config-a-list",
    "config-missing-field",
    "config-not-bert",
  ],
)
def test_damaged_text_model_is_named(standin_dir, damage, file, says):
  from ecg_contrastive.models.bert import TextModelError, load_hf_encoder

  path = os.path.join(standin_dir, file)
  damage(path)
  with pytest.raises(TextModelError) as info:
    load_hf_encoder(standin_dir)
  assert (
    str(info.value).startswith(path)
    and says in str(info.value)
    and isinstance(info.value, UserError)
  )


def test_missing_text_model_files_are_named(standin_dir):
  from ecg_contrastive.models.bert import load_hf_encoder
  from ecg_contrastive.text.tokenizer import load_tokenizer

  os.remove(os.path.join(standin_dir, "model.safetensors"))
  with pytest.raises(
    FileNotFoundError, match=r"lacks model\.safetensors.*local Hugging Face model directory"
  ):
    load_hf_encoder(standin_dir)
  for f in ("vocab.txt", "tokenizer_config.json"):
    os.remove(os.path.join(standin_dir, f))
  with pytest.raises(FileNotFoundError, match=r"has no tokenizer files.*save_pretrained"):
    load_tokenizer(standin_dir)


def test_damaged_tokenizer_config_is_named(standin_dir):
  from ecg_contrastive.text.tokenizer import TokenizerError, load_tokenizer

  _overwrite(os.path.join(standin_dir, "tokenizer_config.json"), b"{not json")
  with pytest.raises(TokenizerError) as info:
    load_tokenizer(standin_dir)
  assert (
    standin_dir in str(info.value)
    and "save_pretrained" in str(info.value)
    and "\n" not in str(info.value)
  )


@pytest.mark.slow
def test_damaged_text_model_stops_training_with_one_line(tmp_path):
  """A UserError raised mid-run (here: the text model loads after the data) is one line from main, exit 2."""
  from ecg_contrastive.text.standin import write_standin_model

  model = write_standin_model(str(tmp_path / "model"), hidden_size=16, num_layers=1, num_heads=2)
  _truncate(os.path.join(model, "model.safetensors"))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "ecg_contrastive.main",
      "--config",
      "configs/default.py:tiny",
      "--workdir",
      str(tmp_path / "run"),
      f"--config.text.model_dir={model}",
      f"--config.data_dir={tmp_path / 'tfds'}",
      f"--config.text.cache_dir={tmp_path / 'text'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  errors = [
    line for line in result.stderr.splitlines() if line.startswith("error: ") or "Traceback" in line
  ]
  assert result.returncode == 2 and errors == [errors[0]], result.stderr[-3000:]
  assert (
    f"{model}/model.safetensors: unreadable safetensors file" in errors[0]
    and "copy the model" in errors[0]
  )
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
