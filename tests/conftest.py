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

_caches = tempfile.mkdtemp(prefix="ecg_contrastive_test_caches_")
atexit.register(shutil.rmtree, _caches, ignore_errors=True)
os.environ["ECG_CONTRASTIVE_DATA"] = os.path.join(_caches, "tfds")
os.environ["ECG_CONTRASTIVE_CACHE"] = os.path.join(_caches, "text")
