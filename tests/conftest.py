"""Test set-up: 8 virtual CPU devices so sharding is exercised on any machine.

XLA_FLAGS must be set before JAX initialises its backends, hence here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Every run starts from empty data and text caches, as on a machine that never saw the project: a test can never
# pass on a dataset or embedding table left behind by an earlier run (or a user's own caches under ~/.cache).
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

_caches = tempfile.mkdtemp(prefix="ecg_contrastive_test_caches_")
atexit.register(shutil.rmtree, _caches, ignore_errors=True)
os.environ["ECG_CONTRASTIVE_DATA"] = os.path.join(_caches, "tfds")
os.environ["ECG_CONTRASTIVE_CACHE"] = os.path.join(_caches, "text")

# One on-disk JAX compilation cache for the whole session, empty at its start like the caches above. Many tests
# compile the same programs (the tiny config's train step, its evaluation, the text tower): a new jit of a program
# compiled before reads the executable back instead of compiling it again. A cached executable is the one XLA
# would compile again, so no result changes. Set in os.environ: the subprocesses that tests start
# (ecg_contrastive.main, sweep) use it too, and the pytest-xdist workers keep the one their controller made (they
# load this file with PYTEST_XDIST_WORKER set), so the workers share it. JAX writes and reads its entries under a
# file lock when the cache has a maximum size (the lock needs the filelock package, which torch and
# huggingface_hub require); without the package each worker keeps a cache of its own.
if "PYTEST_XDIST_WORKER" not in os.environ or "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_caches, "jax")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
try:
  import filelock  # noqa: E402, F401

  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
except ImportError:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_caches, "jax")


# `make test` runs two xdist workers with --dist loadfile --no-loadscope-reorder: each worker takes the next whole
# file in collection order when it runs low. The heaviest files go first (longest first), so that the two workers
# finish close together instead of one running a long file alone at the end. The names: the slowest files by CPU
# seconds per file in a full run with the session compilation cache (2026-12-02), slowest first; a file not listed
# runs after these, in the usual order. Only under xdist: a serial run keeps pytest's own order.
HEAVY_FILES_FIRST = (
  "test_preemption.py",
  "test_grad_cache.py",
  "test_train.py",
  "test_multiprocess.py",
  "test_tiled_loss.py",
  "test_bench.py",
  "test_sweep.py",
  "test_llama.py",
  "test_independent.py",
  "test_batch_norm.py",
  "test_text_precompute.py",
  "test_losses.py",
  "test_real_data.py",
  "test_export.py",
  "test_ood.py",
  "test_paths.py",
)


def pytest_collection_modifyitems(config, items):
  if "PYTEST_XDIST_WORKER" not in os.environ:
    return
  rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
  items.sort(
    key=lambda item: rank.get(item.path.name, len(rank))
  )  # stable: a file's tests keep their order


# The data tests' shared fixtures: one tiny dataset per test module (each module builds its own, so no module can
# see another's caches) and the 8-device mesh. Imports inside: the many tests that use neither start no TFDS.
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A TFDS data dir holding synthetic_ecg_ja/tiny (tests/data_helpers.DATASET), built for this module."""
  import tensorflow_datasets as tfds

  from tests.data_helpers import DATASET

  path = tmp_path_factory.mktemp("tfds")
  tfds.builder(DATASET, data_dir=str(path)).download_and_prepare()
  return str(path)


@pytest.fixture(scope="module")
def mesh():
  """sharding.make_mesh() over the 8 virtual CPU devices set above."""
  import jax

  from ecg_contrastive import sharding

  assert jax.device_count() == 8, "tests/conftest.py sets 8 virtual CPU devices"
  return sharding.make_mesh()
