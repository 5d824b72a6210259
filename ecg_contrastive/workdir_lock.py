"""One run per workdir: WORKDIR/run.lock = {"host", "pid", "since"} (JSON), held while a training run is alive.

Process 0 takes the lock (it is the writer of the workdir); the other processes of a multi-host run learn from it
whether it got the lock. A second run on a locked workdir fails at once with WorkdirLockedError. A lock left by a
dead process of this host (kill -9, power loss) is stale: it is logged and taken over. A lock of another host is
never judged stale (its pid means nothing here): the message says to delete the file if that run is gone.

Locally the lock file is created atomically (written to a temporary name, then hard-linked: fails if it exists);
on a remote workdir (gs://) it is a check then a write, which two runs started within the same second can race.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import uuid

import jax
from etils import epath

from ecg_contrastive.errors import UserError

log = logging.getLogger("ecg_contrastive")

LOCK_NAME = "run.lock"


class WorkdirLockedError(UserError, RuntimeError):
  """Another run holds the workdir; the message is one line naming it, the holder and what to do."""


def lock_path(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / LOCK_NAME


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


class WorkdirLock:
  """Context manager: takes WORKDIR/run.lock on enter (process 0), removes it on exit, exceptions included."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = workdir
    self.path = lock_path(workdir)
    self.held = False
    self.record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }

  def __enter__(self) -> WorkdirLock:
    error = None
    if jax.process_index() == 0:
      try:
        self.acquire()
      except WorkdirLockedError as e:
        error = e
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      failed = bool(multihost_utils.broadcast_one_to_all(error is not None))
      if failed and error is None:
        raise WorkdirLockedError(
          f"workdir {self.workdir} is locked by another run: process 0 could not take "
          f"{self.path} (its log says by whom)"
        )
    if error is not None:
      raise error
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a stale lock is removed and the creation tried again
      if self._create():
        self.held = True
        return
      holder = self._read()
      if holder == {}:  # removed meanwhile by its run: try again
        continue
      if holder is None:
        log.warning(
          "workdir lock %s is unreadable (a run that died while writing it?): taking it over",
          self.path,
        )
      elif self._stale(holder):
        log.warning(
          "workdir lock %s is stale (pid %s of this host %s, since %s, is not running): taking it over",
          self.path,
          holder.get("pid"),
          holder.get("host"),
          holder.get("since"),
        )
      else:
        raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by another run (host {holder.get('host')}, pid {holder.get('pid')}, "
          f"since {holder.get('since')}): wait for it to end or use another --workdir; if that run is gone, "
          f"delete {self.path}"
        )
      self.path.unlink(missing_ok=True)
    raise WorkdirLockedError(
      f"could not take the workdir lock {self.path}: another run keeps recreating it"
    )

  def _create(self) -> bool:
    text = json.dumps(self.record)
    path = os.fspath(self.path)
    if "://" in path:  # remote: no atomic create-if-absent through epath
      if self.path.exists():
        return False
      self.path.write_text(text)
      return True
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    try:
      os.link(tmp, path)
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(tmp)

  def _read(self) -> dict | None:
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return {}  # released meanwhile: not stale, not held; the next _create tries again
    except (ValueError, OSError):
      return None
    return holder if isinstance(holder, dict) else None

  def _stale(self, holder: dict) -> bool:
    pid = holder.get("pid")
    return (
      holder.get("host") == self.record["host"] and isinstance(pid, int) and not _pid_alive(pid)
    )

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      if self._read() == self.record:  # never remove a lock that someone else took over
        self.path.unlink(missing_ok=True)
    except OSError as e:
      log.warning("could not remove the workdir lock %s: %s", self.path, e)
