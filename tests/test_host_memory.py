"""flix.host_memory: the malloc options are set under 'retain' and not under 'system'.

Each case runs in a fresh process: the options must be set before JAX starts its backend, and
this test process already set them (conftest.py). What the options do to a step's page faults
is measured by `python -m experiments.bench memory`, not asserted here (that is glibc's behaviour).
"""

import json
import os
import subprocess
import sys

import pytest

from experiments.bench.__main__ import main

# A 64 MiB malloc: with M_MMAP_MAX = 0 it comes from the heap, else glibc mmaps it (its mmap
# threshold is at most 32 MiB on 64-bit), which mallinfo2 counts in `hblks`.
SCRIPT = """
import ctypes, ctypes.util
from flix import host_memory
applied = host_memory.retain_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                             "usmblks", "fsmblks", "uordblks", "fordblks",
                                             "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(block)
print(applied, mmapped, host_memory.describe().split(":")[0])
"""


def run(mode):
  env = dict(os.environ, FLIX_HOST_MALLOC=mode)
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  applied, mmapped, described = out.stdout.split()
  return applied == "True", int(mmapped), described


def test_retain_sets_the_options_and_system_does_not():
  assert run("retain") == (True, 0, "retain")  # No mmap for a large block: the option is set.
  assert run("system") == (False, 1, "system")  # glibc's default: a large block is mmapped.


def test_unknown_mode_is_refused(monkeypatch):
  from flix import host_memory
  monkeypatch.setenv("FLIX_HOST_MALLOC", "jemalloc")
  with pytest.raises(ValueError, match=r"FLIX_HOST_MALLOC='jemalloc'; expected one of "
                                       r"\('retain', 'system'\)"):
    host_memory.retain_freed_memory()


@pytest.mark.bench
def test_memory_bench_writes_schema(tmp_path, capsys):
  out = tmp_path / "memory.json"
  main(["memory", "--batch", "64", "--d", "32", "--layers", "2", "--warmup", "1", "--calls", "3",
        "--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "records"}
  assert data["config"]["calls"] == 3 and data["config"]["batch"] == 64
  records = data["records"]
  assert [(r["mode"], r["applied"]) for r in records] == [("retain", True), ("system", False)]
  for r in records:
    assert len(r["all_faults"]) == 3 and all(f >= 0 for f in r["all_faults"])
    assert r["faults_per_call"] == sorted(r["all_faults"])[1]
    assert r["temp_pages"] > 0
    assert r["faults_per_temp_page"] == pytest.approx(r["faults_per_call"] / r["temp_pages"])
    assert r["host_malloc"].startswith(r["mode"])
  assert "faults/call" in capsys.readouterr().out
