"""The language table (`languages.json`, data): code -> name, family, macrofamily, script.

`derived_features` turns it into the `derived` argument of `FeatureSpace.build`, so that
family and script become feature types derived from `lang` where features enter the model
(`FeatureSpace.encode`), never downstream.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Mapping, Sequence

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "languages.json")
FIELDS = ("family", "macrofamily", "script")


@functools.cache
def table(path: str = TABLE_PATH) -> Mapping[str, Mapping[str, str]]:
  """`{code: {"name", "family", "macrofamily", "script"}}` from the JSON table at `path`."""
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  languages = data.get("languages") if isinstance(data, dict) else None
  if not isinstance(languages, dict):
    raise ValueError(f"{path}: expected an object with a 'languages' object")
  for code, entry in languages.items():
    missing = [k for k in ("name", *FIELDS) if not isinstance(entry.get(k), str)]
    if missing:
      raise ValueError(f"{path}: language {code!r} lacks the string fields {missing}")
  return languages


def derived_features(langs: Sequence[str], fields: Sequence[str] = ("family", "script"),
                     path: str = TABLE_PATH) -> dict[str, tuple[str, dict[str, str]]]:
  """`{field: ("lang", {code: value})}` over the languages the table knows.

  Languages missing from the table get no derived features (logged, not an error): their
  family and script are INACTIVE when encoded.
  """
  unknown_fields = [f for f in fields if f not in FIELDS]
  if unknown_fields:
    raise ValueError(f"unknown language fields {unknown_fields}; the table has {list(FIELDS)}")
  languages = table(path)
  missing = sorted(set(langs) - set(languages))
  if missing:
    logging.warning("languages %s are not in the language table %s: they get no derived "
                    "features (%s)", missing, path, ", ".join(fields))
  return {f: ("lang", {code: languages[code][f] for code in languages}) for f in fields}
