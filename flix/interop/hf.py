"""Hugging Face model directories <-> flix models, whatever the family.

The architecture comes from config.json's `architectures` (else its `model_type`):

    T5ForConditionalGeneration, MT5ForConditionalGeneration   flix T5        (`hf_t5`)
    LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,   flix DecoderLM (`hf_decoder`)
    GemmaForCausalLM

Each family module provides the same functions (config_from_hf, hf_config, generation_config,
projection_map, load_state, to_state_dict, PEFT_TASK_TYPE); this module picks one.

    from flix.interop import hf
    config, params = hf.load_hf("path/to/hf_dir")   # T5Config | DecoderConfig, float32 params
    hf.save_hf("out/hf", params, config)             # config.json + model.safetensors
"""

from __future__ import annotations

from types import ModuleType
from typing import Mapping

from flix.errors import HFConversionError
from flix.interop import hf_decoder, hf_t5
from flix.interop.hf_files import (CONFIG_JSON, GENERATION_CONFIG_JSON, SAFETENSORS,
                                   read_hf_config, read_hf_weights, write_hf_dir)
from flix.models.families import ModelConfig, family_of

FAMILY_MODULES: dict[str, ModuleType] = {"t5": hf_t5, "decoder": hf_decoder}
ARCHITECTURES = {a: m for m in FAMILY_MODULES.values() for a in m.ARCHITECTURES}
_MODEL_TYPES = {"t5": hf_t5.ARCHITECTURES[0], "mt5": hf_t5.ARCHITECTURES[1],
                **hf_decoder.MODEL_TYPES}


def architecture(hf_config: Mapping) -> str:
  """The supported transformers class a `config.json` dict names (else HFConversionError)."""
  names = hf_config.get("architectures")
  if names:
    name = names[0]
  else:
    name = _MODEL_TYPES.get(hf_config.get("model_type"))
    if name is None:
      raise HFConversionError(
          f"config.json: no architectures and model_type {hf_config.get('model_type')!r}; "
          f"supported model types: {list(_MODEL_TYPES)}")
  if name not in ARCHITECTURES:
    raise HFConversionError(f"config.json: architecture {name!r} is not supported; expected one "
                            f"of {list(ARCHITECTURES)}")
  return name


def family_module(config: ModelConfig) -> ModuleType:
  """`hf_t5` or `hf_decoder`, for a T5Config or a DecoderConfig."""
  return FAMILY_MODULES[family_of(config)]


def config_from_hf(hf_config: Mapping, dropout_rate: float | None = None) -> ModelConfig:
  """The flix config of a `config.json` dict (architecture detected)."""
  return ARCHITECTURES[architecture(hf_config)].config_from_hf(hf_config, dropout_rate)


def load_hf(hf_dir: str, dropout_rate: float | None = None) -> tuple[ModelConfig, dict]:
  """(model config, plain float32 params without adapters) of a local transformers directory.

  `dropout_rate` overrides the config's (T5) or sets DecoderConfig's (default 0). Use the
  params as a base or initial checkpoint (`flix.checkpoints.save_model(path, params, config)`).
  """
  hf_config = read_hf_config(hf_dir)
  config = config_from_hf(hf_config, dropout_rate)
  state = read_hf_weights(hf_dir)
  return config, family_module(config).load_state(hf_config, config, state)


def projection_map(config: ModelConfig) -> list[tuple[tuple[str, ...], str, str]]:
  """Every projection as (flix param path, HF module path, flix target name)."""
  return family_module(config).projection_map(config)


def to_hf_state_dict(params, config: ModelConfig):
  """The transformers state dict (float32 numpy) of base params (no adapter leaves)."""
  return family_module(config).to_state_dict(params, config)


def save_hf(out_dir: str, params, config: ModelConfig, *, overwrite: bool = False) -> str:
  """Writes config.json, generation_config.json and model.safetensors for the architecture the
  config maps to (`T5ForConditionalGeneration` /
  `AutoModelForCausalLM.from_pretrained`)."""
  family = family_module(config)
  state = family.to_state_dict(params, config)
  return write_hf_dir(out_dir, {CONFIG_JSON: family.hf_config(config),
                                GENERATION_CONFIG_JSON: family.generation_config(config)},
                      SAFETENSORS, state, overwrite=overwrite)

