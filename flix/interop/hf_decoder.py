"""transformers Llama / Mistral / Qwen2 / Gemma causal LMs <-> flix `DecoderLM`.

Mapping, HF key -> flix param path (torch Linear weights `(out, in)`, flix kernels `[in, out]`):

    model.embed_tokens.weight                          token_embedder/embedding  [vocab, emb]
    model.layers.{i}.input_layernorm.weight            layers_{i}/pre_attention_layer_norm/scale
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   layers_{i}/attention/{query,key,value,out}
    model.layers.{i}.self_attn.{q,k,v}_proj.bias       .../{query,key,value}/bias (Qwen2)
    model.layers.{i}.post_attention_layernorm.weight   layers_{i}/pre_mlp_layer_norm/scale
    model.layers.{i}.mlp.{gate,up,down}_proj.weight    layers_{i}/mlp/{wi_0,wi_1,wo}
    model.norm.weight                                  decoder_norm/scale
    lm_head.weight                                     logits_dense/kernel (untied only)

Gemma stores its RMSNorm weight w and computes x * (1 + w), as flix's `norm_scale_plus_one`
does, so the values are copied unchanged. Rotary `inv_freq` buffers of older checkpoints are
ignored (flix computes them from the config).

Architectures: LlamaForCausalLM (untied by default; GQA; rope types default, linear, llama3),
MistralForCausalLM (sliding window), Qwen2ForCausalLM (q/k/v biases; a sliding window on every
layer or none), GemmaForCausalLM (1 + w norms, sqrt(d) embedding scale, GeGLU, tied). RoPE
parameters are read from transformers 5.x's `rope_parameters` or 4.x's `rope_theta` +
`rope_scaling`, and both are written. Anything else (o_proj or MLP biases, other rope types,
windows on some layers only, bidirectional Gemma) is refused with the value and what is
supported. `to-hf` writes the architecture the config needs: Gemma for 1 + w norms with the
embedding scale, else Qwen2 for q/k/v biases, else Mistral for a sliding window, else Llama;
its token ids are flix's (PAD 0, EOS 1, as flix trains and decodes).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from flix.errors import HFConversionError
from flix.interop.hf_state import LeafMap, StateReader, read_leaves, write_leaves
from flix.models.decoder import DecoderConfig, DecoderLM, abstract_params

# model_type -> architecture.
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}
ARCHITECTURES = tuple(MODEL_TYPES.values())
PEFT_TASK_TYPE = "CAUSAL_LM"
# hidden_act -> DecoderConfig.mlp_activation (Gemma's legacy "gelu" means the tanh form).
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu": "gelu"}
_HF_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
ROPE_TYPES = ("default", "linear", "llama3")
# Each class's default where config.json leaves a field out (transformers' own defaults).
_TIED_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "gemma": True}
_DEFAULT_WINDOW = 4096  # MistralConfig / Qwen2Config.sliding_window.
_PROJECTIONS = {"attention": {"query": "self_attn.q_proj", "key": "self_attn.k_proj",
                              "value": "self_attn.v_proj", "out": "self_attn.o_proj"},
                "mlp": {"wi_0": "mlp.gate_proj", "wi_1": "mlp.up_proj", "wo": "mlp.down_proj"}}
_LM_HEAD = "lm_head.weight"
_EMBEDDING = "model.embed_tokens.weight"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _refuse(field: str, value, supported: str) -> HFConversionError:
  return HFConversionError(f"config.json: {field} {value!r} is not supported; {supported}")


# -- configs ------------------------------------------------------------------------------------
def _model_type(hf_config: Mapping) -> str:
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise _refuse("model_type", model_type, f"expected one of {list(MODEL_TYPES)}")
  return model_type


def _rope_fields(hf_config: Mapping) -> dict:
  """DecoderConfig's rope fields from 5.x `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
  params = hf_config.get("rope_parameters")
  if params is None:
    params = dict(hf_config.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf_config.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in ROPE_TYPES:
    raise _refuse("rope_type", rope_type, f"expected one of {list(ROPE_TYPES)} (DecoderLM has "
                  "no other frequency scaling)")

  def value(key):
    if key not in params:
      raise HFConversionError(f"config.json: rope_type {rope_type!r} needs {key!r} in "
                              "rope_parameters / rope_scaling")
    return params[key]

  fields = {"rope_theta": float(theta), "rope_type": rope_type}
  if rope_type != "default":
    fields["rope_factor"] = float(value("factor"))
  if rope_type == "llama3":
    fields.update(rope_low_freq_factor=float(value("low_freq_factor")),
                  rope_high_freq_factor=float(value("high_freq_factor")),
                  rope_original_max_positions=int(value("original_max_position_embeddings")))
  return fields


def _sliding_window(hf_config: Mapping, model_type: str, num_layers: int) -> int | None:
  """The window every layer uses (None: full attention), as transformers reads the config."""
  if model_type == "mistral":
    window = hf_config.get("sliding_window", _DEFAULT_WINDOW)
    return None if window is None else int(window)
  if model_type != "qwen2":
    return None
  window = hf_config.get("sliding_window", _DEFAULT_WINDOW)
  if not hf_config.get("use_sliding_window", False) or window is None:
    return None  # transformers then ignores layer_types' "sliding_attention".
  layer_types = hf_config.get("layer_types") or [
      "sliding_attention" if i >= hf_config.get("max_window_layers", 28) else "full_attention"
      for i in range(num_layers)]
  kinds = sorted(set(layer_types))
  if kinds == ["full_attention"]:
    return None
  if kinds == ["sliding_attention"]:
    return int(window)
  raise _refuse("layer_types", layer_types, "DecoderLM needs the same attention on every layer: "
                "all 'full_attention', or all 'sliding_attention'")


def config_from_hf(hf_config: Mapping, dropout_rate: float | None = None) -> DecoderConfig:
  """DecoderConfig (float32 activations) of a Llama / Mistral / Qwen2 / Gemma `config.json`."""
  model_type = _model_type(hf_config)
  required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads")
  missing = [k for k in required if k not in hf_config]
  if missing:
    raise HFConversionError(f"config.json: missing fields {missing}")
  for field in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
    if hf_config.get(field):
      raise _refuse(field, hf_config[field], "DecoderLM has biases on q/k/v only (Qwen2) and "
                    "causal attention")
  gemma = model_type == "gemma"
  act_field = "hidden_activation" if gemma and hf_config.get("hidden_activation") else "hidden_act"
  act = hf_config.get(act_field, "gelu_pytorch_tanh" if gemma else "silu")
  if act not in ACTIVATIONS:
    raise _refuse(act_field, act, f"expected one of {list(ACTIVATIONS)}")
  heads = int(hf_config["num_attention_heads"])
  layers = int(hf_config["num_hidden_layers"])
  try:
    return DecoderConfig(
        vocab_size=int(hf_config["vocab_size"]),
        emb_dim=int(hf_config["hidden_size"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        head_dim=int(hf_config.get("head_dim") or hf_config["hidden_size"] // heads),
        mlp_dim=int(hf_config["intermediate_size"]),
        num_layers=layers,
        mlp_activation="gelu_tanh" if gemma and act == "gelu" else ACTIVATIONS[act],
        norm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)),
        norm_scale_plus_one=gemma,
        qkv_bias=model_type == "qwen2",
        logits_via_embedding=bool(hf_config.get("tie_word_embeddings",
                                                _TIED_DEFAULT[model_type])),
        scale_embeddings=gemma,
        sliding_window=_sliding_window(hf_config, model_type, layers),
        dropout_rate=0.0 if dropout_rate is None else float(dropout_rate),
        **_rope_fields(hf_config))
  except ValueError as e:
    raise HFConversionError(f"config.json: {e}") from None


def architecture_of(config: DecoderConfig) -> str:
  """The transformers class that computes `config` (see the module docstring)."""
  if config.norm_scale_plus_one or config.scale_embeddings:
    if not (config.norm_scale_plus_one and config.scale_embeddings):
      raise HFConversionError(
          f"DecoderConfig(norm_scale_plus_one={config.norm_scale_plus_one}, scale_embeddings="
          f"{config.scale_embeddings}) has no transformers equivalent: Gemma has both")
    if config.qkv_bias or config.sliding_window is not None:
      raise HFConversionError("DecoderConfig with Gemma norms and q/k/v biases or a sliding "
                              "window has no transformers equivalent (GemmaForCausalLM has "
                              "neither)")
    return "GemmaForCausalLM"
  if config.qkv_bias:
    return "Qwen2ForCausalLM"
  return "MistralForCausalLM" if config.sliding_window is not None else "LlamaForCausalLM"


def hf_config(config: DecoderConfig) -> dict:
  """A transformers `config.json` dict (4.x and 5.x rope keys both) for `config`."""
  architecture = architecture_of(config)
  model_type = {v: k for k, v in MODEL_TYPES.items()}[architecture]
  rope = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
  if config.rope_type != "default":
    rope["factor"] = config.rope_factor
  if config.rope_type == "llama3":
    rope.update(low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_positions)
  scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
  out = {
      "architectures": [architecture],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.emb_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": _HF_ACTIVATIONS[config.mlp_activation],
      "rms_norm_eps": config.norm_epsilon,
      # DecoderLM's rotary embeddings have no length limit; this is only what HF reports.
      "max_position_embeddings": int(config.rope_original_max_positions
                                     * (config.rope_factor if config.rope_type != "default"
                                        else 1)),
      "rope_parameters": rope,
      "rope_theta": config.rope_theta,
      "rope_scaling": scaling if config.rope_type != "default" else None,
      "tie_word_embeddings": config.logits_via_embedding,
      "attention_dropout": 0.0,
      "bos_token_id": None,
      "eos_token_id": 1,
      "pad_token_id": 0,
      "use_cache": True,
  }
  if model_type == "gemma":
    out["hidden_activation"] = out["hidden_act"]
  if model_type in ("llama", "gemma"):
    out.update(attention_bias=False)
  if model_type == "llama":
    out.update(mlp_bias=False)
  if model_type == "mistral":
    out["sliding_window"] = config.sliding_window
  if model_type == "qwen2":
    window = config.sliding_window
    out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0,
               layer_types=[("full_attention" if window is None else "sliding_attention")]
               * config.num_layers)
  return out


def generation_config(config: DecoderConfig) -> dict:
  """`generation_config.json`: flix's EOS (1) and PAD (0)."""
  del config
  return {"eos_token_id": 1, "pad_token_id": 0}


# -- parameter trees ----------------------------------------------------------------------------
def projection_map(config: DecoderConfig) -> list[tuple[tuple[str, ...], str, str]]:
  """Every projection as (flix param path, HF module path, flix target name)."""
  return [((f"layers_{i}", block, name), f"model.layers.{i}.{module}", f"{block}.{name}")
          for i in range(config.num_layers)
          for block, names in _PROJECTIONS.items() for name, module in names.items()]


def leaf_map(config: DecoderConfig) -> LeafMap:
  """Every base parameter as (flix path, HF key, transposed); see the module docstring."""
  out = [(("token_embedder", "embedding"), _EMBEDDING, False)]
  for i in range(config.num_layers):
    hf = f"model.layers.{i}."
    out.append(((f"layers_{i}", "pre_attention_layer_norm", "scale"),
                hf + "input_layernorm.weight", False))
    out.append(((f"layers_{i}", "pre_mlp_layer_norm", "scale"),
                hf + "post_attention_layernorm.weight", False))
  for path, module, target in projection_map(config):
    out.append((path + ("kernel",), f"{module}.weight", True))
    if config.qkv_bias and target in ("attention.query", "attention.key", "attention.value"):
      out.append((path + ("bias",), f"{module}.bias", False))
  out.append((("decoder_norm", "scale"), "model.norm.weight", False))
  if not config.logits_via_embedding:
    out.append((("logits_dense", "kernel"), _LM_HEAD, True))
  return out


def from_state_dict(state: Mapping[str, np.ndarray], config: DecoderConfig) -> dict:
  """DecoderLM base params (plain float32 numpy, no adapters) of a transformers state dict."""
  reader = StateReader(state, architecture_of(config))
  reader.ignore(_IGNORED_SUFFIXES)
  if not config.logits_via_embedding:
    reader.require(_LM_HEAD, "config.json unties the output embedding: "
                   "tie_word_embeddings=false")
  params = read_leaves(reader, leaf_map(config), abstract_params(DecoderLM(config)))
  if config.logits_via_embedding:
    reader.take_tied(_LM_HEAD, params["token_embedder"]["embedding"],
                     "config.json ties the output embedding (tie_word_embeddings=true)")
  reader.check_all_used()
  return params


def load_state(hf_config: Mapping, config: DecoderConfig, state: dict[str, np.ndarray]) -> dict:
  """`from_state_dict` (the config.json needs nothing more here)."""
  del hf_config
  return from_state_dict(state, config)


def to_state_dict(params, config: DecoderConfig) -> dict[str, np.ndarray]:
  """transformers state dict (float32 numpy) of DecoderLM base params (no adapter leaves; a
  tied output embedding is written once, as model.embed_tokens.weight)."""
  return write_leaves(params, leaf_map(config))
