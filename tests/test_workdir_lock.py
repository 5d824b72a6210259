"""One run per workdir: a held lock stops a second run at once; a stale one is taken over; exits release it."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from ecg_contrastive import train, workdir_lock
from ecg_contrastive.workdir_lock import WorkdirLock, WorkdirLockedError
from tests.test_train import tiny_config


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "run.lock"), "w") as f:
    json.dump(record, f)


def test_second_run_on_a_locked_workdir_fails_fast(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config({"data_dir": str(tmp_path / "tfds"), "cache_dir": str(tmp_path / "text")})
  with WorkdirLock(workdir) as held:
    start = time.perf_counter()
    with pytest.raises(WorkdirLockedError) as e:
      train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
  message = str(e.value)
  assert "\n" not in message
  assert message == (
    f"workdir {workdir} is in use by another run (host {socket.gethostname()}, pid {os.getpid()}, "
    f"since {held.record['since']}): wait for it to end or use another --workdir; if that run is "
    f"gone, delete {workdir}/run.lock"
  )
  print(f"locked workdir refused after {seconds * 1e3:.1f} ms")
  assert (
    seconds < 10.0
  )  # check_config (~2 s on a loaded 2-core CPU), then the lock: before data, text, compiling
  assert (
    sorted(os.listdir(workdir)) == []
  )  # the holder's lock is released, nothing else was written
  assert not os.path.exists(tmp_path / "tfds")


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  pid = dead_pid()
  write_lock(workdir, host=socket.gethostname(), pid=pid, since="2026-01-01 00:00:00 UTC")
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    with WorkdirLock(workdir) as lock:
      with open(os.path.join(workdir, "run.lock")) as f:
        assert json.load(f) == lock.record
      assert lock.record["pid"] == os.getpid()
  assert not os.path.exists(os.path.join(workdir, "run.lock"))
  warnings = [r.getMessage() for r in caplog.records]
  assert warnings == [
    f"workdir lock {workdir}/run.lock is stale (pid {pid} of this host {socket.gethostname()}, "
    "since 2026-01-01 00:00:00 UTC, is not running): taking it over"
  ]


@pytest.mark.parametrize("content", ["", '{"host": "a'])
def test_unreadable_lock_is_taken_over(tmp_path, caplog, content):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "run.lock"), "w") as f:
    f.write(content)
  with caplog.at_level(logging.WARNING, logger="ecg_contrastive"):
    with WorkdirLock(workdir):
      pass
  assert "is unreadable" in caplog.text


def test_lock_of_another_host_is_never_stale(tmp_path):
  workdir = str(tmp_path / "run")
  write_lock(workdir, host="tpu-vm-7", pid=dead_pid(), since="2026-01-01 00:00:00 UTC")
  with pytest.raises(
    WorkdirLockedError,
    match=r"in use by another run \(host tpu-vm-7, pid \d+, since 2026-01-01 "
    r"00:00:00 UTC\).*if that run is gone, delete .*run.lock$",
  ):
    with WorkdirLock(workdir):
      pass
  assert os.path.exists(os.path.join(workdir, "run.lock"))


def test_lock_is_released_on_an_exception(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with pytest.raises(ZeroDivisionError):
    with WorkdirLock(workdir):
      assert os.path.exists(workdir_lock.lock_path(workdir))
      raise ZeroDivisionError
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with WorkdirLock(workdir):
    write_lock(workdir, host="other", pid=1, since="now")
  assert os.path.exists(workdir_lock.lock_path(workdir))
