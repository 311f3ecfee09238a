"""Test set-up: 8 forced host devices (T5X style), before anything imports jax; freed host
memory kept in the process (flix.host_memory), before JAX starts its backend; one persistent
compilation cache per test run; and the fixtures several test files share."""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _compilation_cache():
  """JAX's persistent compilation cache in a directory of this test run, shared by its xdist
  workers and the processes they spawn (environment variables, set before jax is imported).
  Tests compile the same programs again (a resumed run, the same tiny model in another
  process), and a cache hit skips XLA's compile. Every program is cached, however small.
  Returns the directory this process made (and removes at the end), or None.
  FLIX_TEST_COMPILATION_CACHE=off turns it off."""
  if os.environ.get("FLIX_TEST_COMPILATION_CACHE") == "off" or (
      "JAX_COMPILATION_CACHE_DIR" in os.environ):  # A worker of this run, or the user's own.
    return None
  path = tempfile.mkdtemp(prefix="flix-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
  return path


_OWN_CACHE = _compilation_cache()

from flix import host_memory  # noqa: E402

host_memory.retain_freed_memory()

import gin  # noqa: E402
import pytest  # noqa: E402

import entry  # noqa: E402
from tiers import TIER2  # noqa: E402


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The files of more than ~30 CPU-seconds, heaviest first (measured on 2 cores). make test's
# `-n 2 --dist loadfile` hands whole files to its workers in collection order: the heavy ones
# first, the light ones fill the gaps, so neither worker waits for the other at the end.
HEAVY_FILES = ("test_training.py", "test_decoding.py", "test_sparse_step.py", "test_t5.py",
               "test_bf16.py", "test_decoder.py", "test_compile.py", "test_hf_convert.py",
               "test_layers.py")


@pytest.hookimpl(tryfirst=True)  # Before -m selects: the tier2 marker must be on the items.
def pytest_collection_modifyitems(items):
  for item in items:
    if item.path.name in TIER2 or f"{item.path.name}::{item.name}" in TIER2:
      item.add_marker(pytest.mark.tier2)
  heavy = lambda item: (HEAVY_FILES.index(item.path.name) if item.path.name in HEAVY_FILES
                        else len(HEAVY_FILES))
  items.sort(key=heavy)  # Stable: the light files, and each file's tests, keep their order.


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Each test starts without another test's gin bindings (gin's config is process-global, and
  library code such as the study and the demo calls gin-configurable functions directly)."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def tiny_registration():
  """tests/gin/tiny_data.gin's offline benchmark, registered once under the prefix flix_tiny
  (not the entry points' flix_offline, which tests re-register with other vocabularies)."""
  from flix.data.offline_tasks import register_offline
  registration = register_offline(entry.tiny_data(), prefix="flix_tiny")
  yield registration
  registration.unregister()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """The model directory of one tiny FLix run of `python -m flix.train` (tests/gin/
  tiny_offline.gin: 8 steps, checkpoints 4 and 8), trained once per test process. Tests read
  it; one that resumes it or writes into it works on `entry.copy_run(trained_run, ...)`."""
  model_dir = tmp_path_factory.mktemp("trained_run") / "run"
  assert entry.run_train(model_dir) == 0
  gin.clear_config()
  return model_dir
