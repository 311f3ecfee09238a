"""The README's Python runs as written, and `flix` exports the API it uses without weight.

Every ```python block of README.md must compile; the blocks of its "The Python API" section are
executed, in order, in one fresh namespace, from a temporary working directory.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
API_SECTION = "The Python API"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def sections() -> dict[str, str]:
  """`{heading: text}` of README.md's `## ` sections."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  parts = re.split(r"^## (.+)$", text, flags=re.M)
  return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2])}


def python_blocks(text: str) -> list[str]:
  return PYTHON_BLOCK.findall(text)


def test_every_python_block_of_the_readme_compiles():
  blocks = [(heading, block) for heading, body in sections().items()
            for block in python_blocks(body)]
  assert len(blocks) >= 2, "README.md should show a data module and the Python API"
  for heading, block in blocks:
    compile(block, f"README.md ({heading})", "exec")


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
  blocks = python_blocks(sections()[API_SECTION])
  assert blocks, f"README.md's '{API_SECTION}' section has no python block"
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__main__"}
  for block in blocks:
    exec(compile(block, f"README.md ({API_SECTION})", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["loss"].shape == () and bool(namespace["loss"] > 0)
  assert namespace["result"].tokens.shape == (2, 12)


def test_importing_flix_stays_light():
  """`import flix` imports no JAX, TensorFlow or seqio; the public names load on first use."""
  code = ("import sys, flix\n"
          "heavy = [m for m in ('jax', 'tensorflow', 'seqio') if m in sys.modules]\n"
          "assert not heavy, heavy\n"
          "from flix import FeatureSpace, FlixConfig\n"
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules\n")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                 env={**os.environ, "PYTHONPATH": ROOT})


def test_every_public_name_resolves_and_unknown_names_are_named():
  import flix
  for name in flix.__all__:
    assert getattr(flix, name).__name__ == name
  assert set(flix.__all__) <= set(dir(flix))
  with pytest.raises(AttributeError, match="has no attribute 'FlixDense'; its public names"):
    getattr(flix, "FlixDense")
