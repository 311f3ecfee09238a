"""Real files no test wrote: public releases and fixtures in `../shared` (or $FLIX_SHARED_DIR).

The project never commits them; users get them from the public releases. Tests that read them
call `shared_path(...)`, which skips the test with the reason when the files are absent, so a
fresh clone without `../shared` still passes.
"""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.environ.get("FLIX_SHARED_DIR", os.path.join(os.path.dirname(REPO), "shared"))


def shared_path(*parts: str) -> str:
  """`SHARED_DIR/parts...`, or skips the calling test saying what is missing and where."""
  path = os.path.join(SHARED_DIR, *parts)
  if not os.path.exists(path):
    pytest.skip(f"needs {os.path.join(*parts)} from the shared release files: not found at "
                f"{path} (set FLIX_SHARED_DIR to the directory that holds data/ and fixtures/)")
  return path
