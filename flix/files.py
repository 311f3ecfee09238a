"""Output files written atomically: no reader, and no crash, ever sees half a file.

Every output flix writes outside a checkpoint (evaluation reports and predictions, inference
outputs, study results and archives, demo reports, plots, exported JSON) goes through here. The
bytes go to a temporary sibling unique to the call, which is then renamed over `path`: an
interrupted write leaves the previous file whole, and two processes writing the same file at
once both succeed (the last rename wins; a fixed `path.tmp` would let one rename steal the
other's file). Checkpoints have their own atomic directories (`flix.checkpoints`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable

MODE = 0o644  # mkstemp's 0600 would hide results from the other users of a shared directory.


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically, creating its directory."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, MODE)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any, indent: int | None = 1) -> None:
  """`value` as JSON (non-ASCII kept); `indent=None` writes it compactly on one line."""
  write_text(path, json.dumps(value, indent=indent, ensure_ascii=False,
                              separators=None if indent else (",", ":")) + "\n")


def write_jsonl(path: str, records: Iterable[Any],
                default: Callable[[Any], Any] | None = None) -> None:
  """One JSON object per line; `default` as in `json.dumps`."""
  write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=default) + "\n"
                           for r in records))


def save_figure(fig, path: str, **kwargs) -> None:
  """A matplotlib figure saved atomically (format from the file's extension)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png", **kwargs)
  write_bytes(path, buffer.getvalue())
