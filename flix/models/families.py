"""Model families: which config class a checkpoint's `model.json` holds.

`model.json` is the config's fields plus `"family"`: "t5" (`T5Config`) or "decoder"
(`DecoderConfig`). A `model.json` without the key (written before decoder-only models existed)
holds a T5Config.
"""

from __future__ import annotations

import json
from typing import Union

from flix.models.decoder import DecoderConfig
from flix.models.t5 import T5Config

ModelConfig = Union[T5Config, DecoderConfig]
FAMILIES: dict[str, type] = {"t5": T5Config, "decoder": DecoderConfig}
FAMILY_KEY = "family"
LEGACY_FAMILY = "t5"  # model.json files without FAMILY_KEY.


def family_of(config: ModelConfig) -> str:
  """"t5" or "decoder"; a ValueError for any other object."""
  for name, cls in FAMILIES.items():
    if type(config) is cls:  # pylint: disable=unidiomatic-typecheck
      return name
  raise ValueError(f"unknown model config {type(config).__name__}: expected one of "
                   f"{[c.__name__ for c in FAMILIES.values()]}")


def config_to_json(config: ModelConfig) -> str:
  """The `model.json` text of `config`: {"family": ..., **fields}."""
  return json.dumps({FAMILY_KEY: family_of(config), **json.loads(config.to_json())}, indent=2)


def config_from_json(text: str, source: str = "model.json") -> ModelConfig:
  """The config a `model.json` text holds (no "family": a T5Config)."""
  data = json.loads(text)
  family = data.pop(FAMILY_KEY, LEGACY_FAMILY)
  if family not in FAMILIES:
    raise ValueError(f"{source}: unknown model family {family!r}; expected one of "
                     f"{list(FAMILIES)}")
  try:
    return FAMILIES[family](**data)
  except TypeError as e:
    raise ValueError(f"{source}: not a {FAMILIES[family].__name__}: {e}") from None


def gin_bindings(config: ModelConfig, source: str | None = None) -> str:
  """A model gin file for `config`, in the flix/configs/models/*.gin convention.

  Defines the macros MODEL_CONFIG (= @T5Config() or @DecoderConfig()) and DROPOUT_RATE, and
  binds every field as `<Config>.<field> = <Python literal>` (dropout_rate through %DROPOUT_RATE).
  """
  name = type(config).__name__
  family_of(config)  # Raises for an unknown config class.
  lines = [f"# {name} of {source or 'a converted Hugging Face model'} (written by flix.convert).",
           "# Required: none. Defines: MODEL_CONFIG, DROPOUT_RATE.",
           f"DROPOUT_RATE = {config.dropout_rate!r}",
           f"MODEL_CONFIG = @{name}()"]
  for field, value in json.loads(config.to_json()).items():
    if field == "dropout_rate":
      lines.append(f"{name}.dropout_rate = %DROPOUT_RATE")
      continue
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"{name}.{field} = {value!r}")
  return "\n".join(lines) + "\n"
