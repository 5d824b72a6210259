"""A gs:// filesystem on local disk for tests: gs://BUCKET/x is ROOT/BUCKET/x.

`use_fake_gcs(monkeypatch, root)` registers it with fsspec for the gs/gcs protocols (what
etils.epath opens gs:// paths with when TensorFlow is absent) and points orbax's TensorStore
kvstore for gs:// at the same folder (file driver), so checkpoints, metrics and eval files all
land under ROOT. Like GCS (gcsfs), files open only as 'rb' or 'wb' (no append), and writing an
object needs no folder first.
"""

from __future__ import annotations

import importlib
import os

from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import stringify_path


def make_fake_gcs(root: str) -> type:
  """A LocalFileSystem class whose gs:// paths live under `root`."""
  root = os.path.abspath(root)

  class FakeGcs(LocalFileSystem):
    protocol = ("gs", "gcs")
    cachable = False

    def __init__(self, **kw):  # like GCS, an object needs no folder first
      super().__init__(**{**kw, "auto_mkdir": True})

    @classmethod
    def _strip_protocol(cls, path):
      path = stringify_path(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          return os.path.join(root, path[len(prefix) :]).rstrip("/")
      if path == root or path.startswith(root + "/"):
        return path.rstrip("/")
      raise ValueError(f"fake GCS: {path!r} is not a gs:// path")

    def _open(self, path, mode="rb", **kw):
      if mode not in ("rb", "wb"):
        raise NotImplementedError(f"GCS objects open as 'rb' or 'wb' only, not {mode!r}")
      return super()._open(path, mode=mode, **kw)

    def glob(
      self, path, **kw
    ):  # epath prefixes 'gs://' to each result, as gcsfs returns 'bucket/x'
      return [os.path.relpath(p, root) for p in super().glob(path, **kw)]

    def walk(self, path, *args, **kw):
      for top, dirs, files in super().walk(path, *args, **kw):
        yield "gs://" + os.path.relpath(self._strip_protocol(top), root), dirs, files

  return FakeGcs


def use_fake_gcs(monkeypatch, root: str) -> None:
  """gs://BUCKET/x -> root/BUCKET/x for epath (fsspec) and orbax's TensorStore, for one test."""
  from orbax.checkpoint._src.path import gcs_utils

  fs_cls = make_fake_gcs(root)
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, protocol, fs_cls)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  monkeypatch.setattr(
    gcs_utils,
    "get_kvstore_for_gcs",
    lambda path: {"driver": "file", "path": os.path.join(root, str(path).removeprefix("gs://"))},
  )
