"""One path layer for every file the job reads or writes: local paths and gs:// (etils.epath).

    paths.Path("gs://bucket/run") / "config.json"      # epath.Path; never made absolute against the cwd
    paths.write_text(p, text)                           # local: temporary file + rename; gs://: one object
    paths.np_save(p, array); paths.np_load(p)           # .npy through file objects

A remote path (gs://, s3://, ...) is opened through epath's fsspec backend (gcsfs for gs://, as
TFDS and orbax do). A GCS object appears whole when its upload finishes, so a single-object
write is atomic there without a rename (GCS has no rename, only copy + delete). What cannot live
on a bucket (a memory-mapped array) goes to `local_dir(...)`, a folder on this host, and the
caller logs where it went.

`one_process_writes(name, ready, write)`: process 0 writes while the other processes wait at a
barrier; a failure on process 0 is reported to all of them instead of leaving them waiting.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from collections.abc import Callable

import numpy as np
from etils import epath

Path = epath.Path
PathLike = str | os.PathLike
BUILD_TIMEOUT_S = 24 * 3600  # the first build of a large dataset can take hours
log = logging.getLogger(__name__)


def is_remote(p: PathLike) -> bool:
  """Whether `p` names an object store (gs://, s3://, ...) rather than this host's disk."""
  return "://" in os.fspath(p) and not os.fspath(p).startswith("file://")


def path(p: PathLike) -> epath.Path:
  """epath.Path of `p`: remote paths as given, local paths with '~' expanded (relative stays relative)."""
  return Path(p) if is_remote(p) else Path(os.path.expanduser(os.fspath(p)))


def join(p: PathLike, *parts: str) -> str:
  """str path of `p`/parts, remote or local."""
  return os.fspath(path(p).joinpath(*parts))


def makedirs(p: PathLike) -> None:
  """Creates the folder (and parents); a no-op on object stores where folders are prefixes."""
  path(p).mkdir(parents=True, exist_ok=True)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` so that a reader never sees a partial file.

  Local: a temporary file beside `p` (unique name: concurrent writers never share one), then
  os.replace. Remote: one object write (an object is visible only once its upload completes).
  """
  if is_remote(p):
    with path(p).open("wb") as f:
      f.write(data)
    return
  p = os.path.expanduser(os.fspath(p))
  tmp = f"{p}.tmp-{uuid.uuid4().hex}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, p)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(p: PathLike, text: str) -> None:
  """UTF-8 text, written as write_bytes does."""
  write_bytes(p, text.encode("utf-8"))


def read_bytes(p: PathLike) -> bytes:
  with path(p).open("rb") as f:
    return f.read()


def read_text(p: PathLike) -> str:
  return read_bytes(p).decode("utf-8")


def np_save(p: PathLike, array: np.ndarray) -> None:
  """Saves `array` as .npy at `p` (written whole, as write_bytes does)."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  write_bytes(p, buf.getvalue())


def np_load(p: PathLike) -> np.ndarray:
  """The array of the .npy at `p` (read into memory)."""
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def local_dir(kind: str, remote: PathLike) -> str:
  """A folder on this host for what cannot live at `remote`: $ECG_CONTRASTIVE_LOCAL or
  ~/.cache/ecg_contrastive/local, then `kind`, then a short hash of `remote` plus its last part."""
  root = os.environ.get("ECG_CONTRASTIVE_LOCAL") or os.path.expanduser(
    "~/.cache/ecg_contrastive/local"
  )
  remote = os.fspath(remote).rstrip("/")
  tag = hashlib.sha256(remote.encode()).hexdigest()[:12] + "_" + os.path.basename(remote)
  out = os.path.join(root, kind, tag)
  os.makedirs(out, exist_ok=True)
  return out


# ----------------------------------------------------------------------------- one writer, many processes

_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: int = BUILD_TIMEOUT_S) -> None:
  """All JAX processes wait here until every one has arrived (no-op in a single process).

  Uses the jax.distributed coordination service (explicit timeout, no device work) when it is
  up, else a device collective. Every process must pass the same names in the same order.
  """
  import jax

  if jax.process_count() == 1:
    return
  _barriers[name] = _barriers.get(name, 0) + 1
  key = f"ecg_contrastive/{name}/{_barriers[name]}"
  try:
    from jax._src import distributed

    client = distributed.global_state.client
  except (ImportError, AttributeError):
    client = None
  if client is not None:
    client.wait_at_barrier(key, timeout_in_ms=timeout_s * 1000)
  else:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(key)


def one_process_writes(
  name: str, ready: Callable[[], bool], write: Callable[[], None], timeout_s: int = BUILD_TIMEOUT_S
) -> bool:
  """Makes something (a dataset, a cache file) once for all processes; returns whether this process wrote it.

  Process 0 runs `write()` unless `ready()`; the others wait at a barrier, then check `ready()`.
  A process that still does not see it (its folder is on another disk than process 0's, e.g. a
  host-local cache on a pod) writes its own copy and says so. If `write` raises on process 0,
  every other process raises a RuntimeError naming `name` after the barrier (process 0 re-raises
  its own error), so none waits for a write that failed.
  """
  import jax

  if jax.process_count() == 1:
    if ready():
      return False
    write()
    return True
  error, wrote = None, False
  if jax.process_index() == 0:
    try:
      if not ready():
        write()
        wrote = True
    except BaseException as e:  # noqa: BLE001  (reported to every process below, then re-raised)
      error = e
  else:
    log.info("%s: process %d waits for process 0 to write it", name, jax.process_index())
  barrier(name, timeout_s)
  failed = _process_0_failed(error is not None)
  if error is not None:
    raise error
  if failed:
    raise RuntimeError(f"{name}: process 0 failed to write it; its log says why")
  if jax.process_index() != 0:
    if ready():
      log.info("%s: process %d uses what process 0 wrote", name, jax.process_index())
    else:
      log.info(
        "%s: not visible to process %d after process 0 wrote it (a folder on another disk?): "
        "writing a copy on this host",
        name,
        jax.process_index(),
      )
      write()
      wrote = True
  return wrote


def _process_0_failed(failed: bool) -> bool:
  """Every process learns whether process 0 failed (a 1-byte all-gather)."""
  from jax.experimental import multihost_utils

  return bool(np.asarray(multihost_utils.process_allgather(np.array([failed])))[0].any())
