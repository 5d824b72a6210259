"""Lets TFDS prepare splits larger than 1 GB without TensorFlow.

TFDS's example shuffler keeps up to 1 GB of a split in memory and spills the rest to temporary
bucket files through `tf.io.gfile`, the one place the array_record write path still needs
TensorFlow. `plain_file_spill()` gives the shuffler plain local files for those buckets (only when
TensorFlow is missing); the records, their order and the shards written are the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types

from tensorflow_datasets.core import shuffle


class _NeverRaised(Exception):
  """Stands in for tf.errors.ResourceExhaustedError (plain files raise OSError instead)."""


_PLAIN_TF = types.SimpleNamespace(
  io=types.SimpleNamespace(
    gfile=types.SimpleNamespace(GFile=open, exists=os.path.exists, remove=os.remove)
  ),
  errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)


@contextlib.contextmanager
def plain_file_spill():
  """Within the block, TFDS shuffler buckets are plain files if TensorFlow is not installed."""
  if importlib.util.find_spec("tensorflow") is not None:
    yield
    return
  saved = shuffle.tf
  shuffle.tf = _PLAIN_TF
  try:
    yield
  finally:
    shuffle.tf = saved
