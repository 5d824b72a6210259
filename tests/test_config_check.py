"""Every numeric / enum config key: a wrong type, NaN/inf or out-of-range value is a ConfigError naming the key,
the value and what to use; the command line prints it (and an unknown key, a bad --config) as one line, exit 2."""

import errno
import math
import os
import subprocess
import sys

import pytest

from configs import default, paper
from ecg_contrastive.config_check import ConfigError, check_values
from ecg_contrastive.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (key, bad value, what the message must say to use)
BAD_VALUES = [
  ("optimizer.lr", -1e-3, "> 0"),
  ("optimizer.lr", 0.0, "> 0"),
  ("optimizer.lr", math.nan, "> 0"),
  ("optimizer.lr", math.inf, "> 0"),
  ("optimizer.weight_decay", -0.1, ">= 0"),
  ("optimizer.b1", 1.0, "[0, 1)"),
  ("optimizer.b2", -0.5, "[0, 1)"),
  ("optimizer.warmup_steps", -1, ">= 0"),
  ("optimizer.final_lr_fraction", 1.5, "[0, 1]"),
  ("optimizer.grad_clip_norm", -1.0, ">= 0"),
  ("num_steps", -5, ">= 0"),
  ("num_epochs", -1, ">= 0"),
  ("log_every", 0, ">= 1"),
  ("checkpoint_every", 0, ">= 1"),
  ("keep_checkpoints", 0, ">= 1"),
  ("eval_every", -1, ">= 0"),
  ("prefetch", 0, ">= 1"),
  ("batch_size", 0, "positive integer"),
  ("eval_batch_size", -8, "positive integer"),
  ("microbatches", 0, "positive integer"),
  (
    "ecg_length",
    2500,
    "5000",
  ),  # retired keys (config_check.RETIRED): the shape lives in ecg/signal.py
  ("ecg_leads", 8, "12"),
  ("ecg_leads", True, "12"),
  ("text.max_length", 0, "> 2"),
  ("text.batch_size", 0, "positive integer"),
  ("text.pooling", "max", "('cls', 'mean', 'pooler', 'last')"),
  ("text.dtype", "float16", "('float32', 'bfloat16')"),
  ("train.dtype", "fp16", "('float32', 'bfloat16')"),
  ("train.temperature", 0.0, "(0, 1)"),
  ("model.width", 0, "positive integer"),
  ("model.embed_dim", -1, "positive integer"),
  ("model.downsample", 0, ">= 1"),
  ("loss.name", "hinge", "('softmax', 'sigmoid')"),
  ("train_split", "training", "('train', 'validation', 'test')"),
  ("seed", 1.5, "an integer"),
  ("batch_size", "256", "positive integer"),  # a string where a number is expected
  ("num_steps", True, ">= 0"),  # a bool is not a step count
]


def with_value(key, value):
  c = default.get_config()
  c.unlock()
  node = c
  *parents, last = key.split(".")
  for part in parents:
    node = node[part]
  node.__dict__["_fields"][last] = (
    value  # past ConfigDict's own type check: as a config.json or a script could
  )
  return c


def test_shipped_configs_pass():
  for c in (
    default.get_config(),
    default.get_config("tiny"),
    paper.get_config(),
    paper.get_config("ptbxl,/models/bert"),
  ):
    check_values(c)


@pytest.mark.parametrize(
  "key, value, use", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_bad_value_is_named_with_what_to_use(key, value, use):
  with pytest.raises(ConfigError) as info:
    check_values(with_value(key, value))
  message = str(info.value)
  assert message.startswith(f"config.{key}={value!r}: ") and use in message.split("; use ", 1)[1]
  assert "\n" not in message and isinstance(info.value, UserError)


def test_ecg_shape_has_one_home_and_older_configs_still_pass():
  """The input shape is ecg/signal.py's, not a config key; an older config.json with the fixed values passes."""
  from ecg_contrastive.config_check import retired_key_message
  from ecg_contrastive.ecg import signal

  for c in (default.get_config(), default.get_config("tiny"), paper.get_config()):
    assert "ecg_length" not in c and "ecg_leads" not in c
  older = with_value("ecg_length", signal.NUM_SAMPLES)
  older.__dict__["_fields"]["ecg_leads"] = signal.NUM_LEADS
  check_values(older)
  with pytest.raises(
    ConfigError,
    match=r"config.ecg_length=2500: config.ecg_length is no longer a setting: the ECG "
    r"input is fixed at 5000 x 12 \(samples x leads\) by ecg_contrastive/ecg/signal.py",
  ):
    check_values(with_value("ecg_length", 2500))
  assert retired_key_message("batch_size") is None
  assert f"{signal.NUM_SAMPLES} x {signal.NUM_LEADS}" in retired_key_message("ecg_leads")


@pytest.mark.parametrize(
  "splits, says",
  [
    ((), "non-empty tuple"),
    ("test", "non-empty tuple"),
    (("validation", "tset"), "unknown split(s) ['tset']"),
  ],
  ids=["empty", "a-string", "unknown-name"],
)
def test_bad_eval_splits(splits, says):
  with pytest.raises(ConfigError, match="config.eval_splits=") as info:
    check_values(with_value("eval_splits", splits))
  assert says in str(info.value) and "('train', 'validation', 'test')" in str(info.value)


def run_main(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "ecg_contrastive.main", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **(env or {})},
  )


@pytest.mark.parametrize(
  "args, says",
  [
    (
      ["--config.batch_sise=8"],
      ["unknown config key config.batch_sise", "did you mean config.batch_size"],
    ),
    (["--config.model.widht=3"], ["unknown config key config.model.widht", "config.model.width"]),
    (["--config.seed.x=1"], ["config.seed is a value, not a group"]),
    (["--config.num_steps=abc"], ["--config.num_steps=abc", "give a value of the type"]),
    (["--bogus_flag"], ["bogus_flag", "--helpshort"]),
    pytest.param(
      ["--config.optimizer.lr=-0.001"],
      ["config.optimizer.lr=-0.001", "use a number > 0"],
      marks=pytest.mark.slow,
    ),
    pytest.param(
      ["--config.checkpoint_every=0"], ["config.checkpoint_every=0", ">= 1"], marks=pytest.mark.slow
    ),
    pytest.param(
      ["--config.ecg_length=2500"],
      ["--config.ecg_length=2500: unknown config key config.ecg_length", "fixed at 5000 x 12"],
      marks=pytest.mark.slow,
    ),
  ],
  ids=[
    "typo-key",
    "typo-nested-key",
    "key-below-a-value",
    "string-for-int",
    "unknown-flag",
    "negative-lr",
    "checkpoint-every-0",
    "retired-ecg-length",
  ],
)
def test_command_line_mistake_is_one_line_exit_2(args, says, tmp_path):
  result = run_main(
    "--config", "configs/default.py:tiny", "--workdir", str(tmp_path / "run"), *args
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
    result.stderr[-2000:]
  )
  for part in says:
    assert part in lines[0]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize(
  "config, says",
  [
    ("configs/nope.py", ["no such file 'configs/nope.py'", "configs/default.py"]),
    ("configs/default.py:huge", ["unknown variant 'huge'", "'tiny'"]),
    ("README.md", ["not a config file", "get_config"]),
  ],
  ids=["missing-file", "unknown-variant", "not-python"],
)
def test_bad_config_file_is_one_line_exit_2(config, says, tmp_path):
  result = run_main("--config", config, "--workdir", str(tmp_path))
  lines = result.stderr.strip().splitlines()
  assert (
    result.returncode == 2
    and len(lines) == 1
    and lines[0].startswith(f"error: --config {config}: ")
  )
  for part in says:
    assert part in lines[0]


@pytest.mark.slow
def test_missing_flags_and_export_of_a_non_workdir_are_one_line(tmp_path):
  for args, says in (
    (["--workdir", str(tmp_path)], "--config is required"),
    (["--config", "configs/default.py"], "--workdir"),
    (["--workdir", str(tmp_path / "none"), "--mode", "export"], "config.json not found"),
  ):
    result = run_main(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr[-2000:]


def test_traceback_on_request(tmp_path):
  args = ["--config", "configs/default.py", "--workdir", str(tmp_path), "--config.batch_sise=8"]
  for extra, env in (([], {"ECG_CONTRASTIVE_TRACEBACK": "1"}), (["--verbose"], None)):
    result = run_main(*args, *extra, env=env)
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr


@pytest.mark.parametrize(
  "key, value, says",
  [
    (
      "dataset",
      "synthetic_ecg_ja/nope",
      "synthetic_ecg_ja has no variant 'nope'; use one of synthetic_ecg_ja/tiny",
    ),
    (
      "batch_size",
      30,
      "config.batch_size=30: batch_size 30 does not divide over the 8 devices of the mesh; "
      "use a multiple of 8 (e.g. 24 or 32)",
    ),
    (
      "eval_batch_size",
      12,
      "config.eval_batch_size=12: batch_size 12 does not divide over the 8 devices",
    ),
    (
      "microbatches",
      3,
      "config.batch_size=32: microbatches 3 does not divide the 4 ECGs per device",
    ),
    (
      "text.max_length",
      1000,
      "config.text.max_length=1000: the stand-in text model has 512 positions; use at most 512",
    ),
  ],
  ids=[
    "dataset-variant",
    "batch-over-devices",
    "eval-batch-over-devices",
    "microbatches",
    "text-max-length",
  ],
)
def test_dataset_variant_and_batch_split_are_checked_before_any_work(key, value, says, tmp_path):
  from ecg_contrastive.config_check import check_config

  c = default.get_config("tiny")
  node, _, leaf = key.rpartition(".")
  (c[node] if node else c)[leaf] = value
  c.data_dir = str(tmp_path / "tfds")
  with pytest.raises(ConfigError) as info:
    check_config(c)
  assert says in str(info.value)
  assert not os.path.exists(tmp_path / "tfds")  # nothing was built


def test_microbatches_default_has_one_home_and_a_config_without_it_is_told_what_to_set(tmp_path):
  """configs/default.py is the one home of the default; code reads config.microbatches, and check_config names a
  config file that lacks the key (written before it existed) instead of filling in a second default."""
  from ecg_contrastive.config_check import REQUIRED, check_config

  assert "microbatches" in REQUIRED
  assert (
    default.get_config().microbatches
    == default.get_config("tiny").microbatches
    == paper.get_config().microbatches
    == 1
  )
  c = default.get_config("tiny")
  c.data_dir = str(tmp_path / "tfds")
  del c["microbatches"]
  with pytest.raises(ConfigError) as info:
    check_config(c)
  message = str(info.value)
  assert (
    message.startswith("config.microbatches is missing: set it in the config file")
    and "\n" not in message
  )
  assert (
    "a positive integer (1: no gradient caching)" in message and "configs/default.py" in message
  )
  assert not os.path.exists(tmp_path / "tfds")  # nothing was built
  for name in ("step.py", "train.py", "config_check.py"):  # no second default in the code
    with open(os.path.join(ROOT, "ecg_contrastive", name), encoding="utf-8") as f:
      assert 'get("microbatches"' not in f.read()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "afile").write_text("")
  result = run_main("--config", "configs/default.py:tiny", "--workdir", str(tmp_path / "afile"))
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and lines == [
    f"error: --workdir {tmp_path / 'afile'}: is a file; give a directory "
    "(created if absent) for the run's checkpoints"
  ]


@pytest.mark.parametrize(
  "code,hint",
  [(errno.ENOSPC, "free space there"), (errno.EROFS, "read-only"), (errno.EACCES, "no permission")],
)
def test_full_disk_or_forbidden_folder_is_one_line(monkeypatch, capsys, code, hint):
  """A full disk (metrics, eval, cache writes) or a read-only / forbidden folder anywhere in a run: one line naming
  the file and what to do, exit 2; any other OSError keeps its traceback (a bug)."""
  from ecg_contrastive import main as main_lib

  def broken(argv):
    raise OSError(code, os.strerror(code), "/runs/x/metrics.jsonl")

  monkeypatch.setattr(main_lib, "run", broken)
  with pytest.raises(SystemExit) as e:
    main_lib.main([])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert (
    len(err) == 1
    and err[0].startswith(f"error: /runs/x/metrics.jsonl: {os.strerror(code)}; ")
    and hint in err[0]
  )

  def bug(argv):
    raise OSError(errno.EBADF, "Bad file descriptor")

  monkeypatch.setattr(main_lib, "run", bug)
  with pytest.raises(OSError, match="Bad file descriptor"):
    main_lib.main([])
