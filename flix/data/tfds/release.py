"""What every release builder shares: strict line parsing (TSV, JSON Lines) and manual_dir
checks."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds


class ReleaseFormatError(ValueError):
  """A release file that does not follow its official format (names file and line)."""


class ReleaseLayoutError(FileNotFoundError):
  """A manual_dir without the files a builder expects (names the expected layout)."""


def tsv_lines(path: str, fields: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
  """(line number, values) of a UTF-8 TSV file whose lines hold exactly `fields`.

  Strict: a line with another number of tab-separated fields, an empty field, a field with
  leading or trailing whitespace, a carriage return or invalid UTF-8 raises ReleaseFormatError
  naming the file and line.
  """
  layout = "<TAB>".join(fields)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ReleaseFormatError(f"{path}:{number}: not valid UTF-8 ({e.reason})") from None
      line = line[:-1] if line.endswith("\n") else line
      values = line.split("\t")
      if len(values) != len(fields):
        raise ReleaseFormatError(f"{path}:{number}: expected {len(fields)} tab-separated "
                                 f"fields ({layout}), got {len(values)}: {line!r}")
      for name, value in zip(fields, values):
        if not value or value != value.strip() or "\r" in value:
          raise ReleaseFormatError(f"{path}:{number}: field {name!r} is empty or has "
                                   f"surrounding whitespace: {line!r}")
      yield number, values


def jsonl_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) of a UTF-8 JSON Lines file: one JSON object per line.

  Strict: invalid UTF-8, a blank line, invalid JSON or a value other than an object raises
  ReleaseFormatError naming the file and line; so does a file without any line.
  """
  number = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ReleaseFormatError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte "
                                 f"{e.start} of the line)") from None
      if not line.strip():
        raise ReleaseFormatError(f"{path}:{number}: blank line; expected one JSON object per "
                                 "line")
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ReleaseFormatError(f"{path}:{number}: not valid JSON ({e.msg} at column "
                                 f"{e.colno})") from None
      if not isinstance(record, dict):
        raise ReleaseFormatError(f"{path}:{number}: expected a JSON object, got "
                                 f"{type(record).__name__}")
      yield number, record
  if number == 0:
    raise ReleaseFormatError(f"{path}: empty file; expected one JSON object per line")


def require_files(directory: str, names: Sequence[str], layout: str) -> list[str]:
  """Absolute paths of `names` in `directory`; ReleaseLayoutError naming `layout` if any lacks."""
  if not os.path.isdir(directory):
    raise ReleaseLayoutError(f"release directory {directory} does not exist; expected {layout}")
  missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
  if missing:
    raise ReleaseLayoutError(f"{directory} lacks {missing}; expected {layout}")
  return [os.path.join(directory, n) for n in names]


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str) -> tfds.core.DatasetBuilder:
  """Builds `builder`'s dataset from `manual_dir` unless its data dir already holds it."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir)))
  return builder
