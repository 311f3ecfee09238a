"""Test set-up: 8 forced host devices (T5X style), before anything imports jax; freed host
memory kept in the process (flix.host_memory), before JAX starts its backend."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flix import host_memory  # noqa: E402

host_memory.retain_freed_memory()

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Each test starts without another test's gin bindings (gin's config is process-global, and
  library code such as the study and the demo calls gin-configurable functions directly)."""
  gin.clear_config()
  yield
  gin.clear_config()
