"""The wheel carries the gin files, and an installed flix finds them from any directory.

`pip wheel --no-deps` builds from a copy of setup.py + flix/ (a few seconds, nothing written
into the checkout); the check that runs the wheel imports flix from the unpacked wheel alone, as
a non-editable install does, in another working directory.
"""

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

from flix import gin_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "flix")


def config_files() -> list[str]:
  """Every gin file under flix/configs/, relative to the repository root."""
  names = glob.glob(os.path.join(PACKAGE, "configs", "**", "*.gin"), recursive=True)
  return sorted(os.path.relpath(n, ROOT) for n in names)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  source = tmp_path_factory.mktemp("source")
  shutil.copy(os.path.join(ROOT, "setup.py"), source)
  shutil.copytree(PACKAGE, source / "flix", ignore=shutil.ignore_patterns("__pycache__"))
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--quiet", "-w", str(out), str(source)], check=True, capture_output=True)
  (path,) = glob.glob(str(out / "flix-*.whl"))
  return path


def test_the_configs_are_in_the_package():
  assert gin_utils.CONFIGS_DIR == os.path.join(PACKAGE, "configs")
  names = config_files()
  for kind in ("models", "runs", "data", "experiments"):
    assert any(n.startswith(f"flix/configs/{kind}/") for n in names), kind
  assert not os.path.exists(os.path.join(ROOT, "configs")), "configs/ moved to flix/configs/"


def test_the_wheel_holds_every_gin_file(wheel):
  with zipfile.ZipFile(wheel) as z:
    inside = set(z.namelist())
  missing = [n for n in config_files() if n not in inside]
  assert not missing, f"{os.path.basename(wheel)} lacks {missing} (setup.py package_data)"
  assert "flix/data/languages.json" in inside


def test_constraints_pin_every_requirement_inside_its_range(wheel):
  with zipfile.ZipFile(wheel) as z:
    metadata = z.read("flix-0.1.0.dist-info/METADATA").decode()
  required = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines()
              if line.startswith("Requires-Dist:")]
  pins = {}
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line:
        pin = Requirement(line)
        (spec,) = pin.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(pin.name)] = spec.version
  # The test extra's libtpu (flix.compile's TPU targets) is the one jax[tpu] pairs with the pin.
  assert (pins["jax"], pins.get("libtpu")) == ("0.10.2", "0.0.42.1")
  for r in required:
    name = canonicalize_name(r.name)
    assert name in pins, f"constraints.txt pins no version of {r.name} ({r})"
    assert r.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside setup.py's {r}"
    assert all(s.operator != "==" for s in r.specifier), f"setup.py pins {r}; give a range"


def test_an_unpacked_wheel_finds_its_configs_from_another_directory(wheel, tmp_path):
  site, work = tmp_path / "site", tmp_path / "work"
  work.mkdir()
  with zipfile.ZipFile(wheel) as z:
    z.extractall(site)
  experiments = sorted(os.path.basename(n) for n in config_files() if "/experiments/" in n)
  # Unknown configurables are skipped: this checks that every file and include resolves through
  # CONFIGS_DIR, without importing the configurables (TensorFlow, seqio).
  script = textwrap.dedent(f"""
      import gin
      from flix import gin_utils
      assert gin_utils.__file__.startswith({str(site)!r}), gin_utils.__file__
      gin.add_config_file_search_path(gin_utils.CONFIGS_DIR)
      for name in {experiments!r}:
        gin.clear_config()
        gin.parse_config_file('experiments/' + name, skip_unknown=True)
        print(name, gin.query_parameter('%MIXTURE_OR_TASK_NAME'),
              gin.query_parameter('%TASK_FEATURE_LENGTHS')['inputs'])
      """)
  env = {**os.environ, "PYTHONPATH": str(site)}
  done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert [line.split()[0] for line in lines] == experiments
  assert "offline_eval.gin flix_offline.eval 32" in lines
  assert "xtreme_up_lora.gin xtreme_up.train 1024" in lines
