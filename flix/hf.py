"""Hugging Face interop: transformers T5 checkpoints and PEFT LoRA adapters <-> flix.

Nothing here downloads anything; every function reads or writes local directories.
Reading and writing safetensors needs only numpy (and `safetensors` for writing); reading a
`pytorch_model.bin` needs torch. The `hf` extra installs pinned versions of all of them.

Usage::

    from flix import hf
    from flix.features import parse_features
    from flix.models.t5 import T5

    config, params = hf.load_hf("path/to/t5-hf-dir")        # T5Config, plain float32 params
    logits = T5(config).apply({"params": params}, enc_tokens, dec_tokens)

    hf.save_hf("out/hf", params, config)                      # config.json + model.safetensors
    ids = flix_config.space.encode(parse_features("task=ordinal,lang=fr"), partial=True)
    hf.save_hf("out/hf_fr", hf.merge_params(params, flix_config, ids), config)
    hf.save_peft("out/peft_fr", params, config, flix_config, ids)  # PEFT LoRA adapter

Mapping, HF key prefix -> flix param path (torch Linear weights are `(out, in)`, flix kernels
`[in, out]`; relative position tables are `[buckets, heads]` in HF, `[heads, buckets]` here):

    shared                                  token_embedder/embedding
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias
                                            encoder/relpos_bias/rel_embedding (decoder alike)
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}
                                            encoder/layers_{i}/attention/{query,key,value,out}
    encoder.block.{i}.layer.0.layer_norm    encoder/layers_{i}/pre_attention_layer_norm
    encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1 | wi,wo}
                                            encoder/layers_{i}/mlp/{wi_0,wi_1 | wi,wo}
    encoder.block.{i}.layer.1.layer_norm    encoder/layers_{i}/pre_mlp_layer_norm
    decoder.block.{i}.layer.0               self_attention, pre_self_attention_layer_norm
    decoder.block.{i}.layer.1               encoder_decoder_attention (EncDecAttention),
                                            pre_cross_attention_layer_norm
    decoder.block.{i}.layer.2               mlp, pre_mlp_layer_norm
    {encoder,decoder}.final_layer_norm      encoder/encoder_norm, decoder/decoder_norm
    lm_head                                 decoder/logits_dense/kernel (untied variants)

Variants: `feed_forward_proj="gated-gelu"` with an untied `lm_head` and no output rescaling is
T5.1.1 / mT5 / ByT5 (`mlp_activations=("gelu", "linear")`); `"relu"` with tied embeddings and
the decoder output rescaled by d_model**-0.5 is the original T5 (`logits_via_embedding=True`).
transformers 4.x says "rescale" with `tie_word_embeddings` (default true); transformers 5.x
writes `scale_decoder_outputs` as well and always reports `tie_word_embeddings: true`, so
`scale_decoder_outputs` wins when present. Files written here carry both keys, consistent.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import flax.linen as nn
import numpy as np

from flix import merge as flix_merge
from flix.checkpoints import atomic_directory
from flix.config import FlixConfig
from flix.features import INACTIVE, UnknownFeatureError
from flix.layers import a_name, b_name
from flix.models.t5 import T5Config

CONFIG_JSON = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
# feed_forward_proj -> T5Config.mlp_activations ("gelu_new" is the tanh approximation).
FEED_FORWARD = {"gated-gelu": ("gelu", "linear"), "gated-gelu_new": ("gelu", "linear"),
                "relu": ("relu",)}

# flix attention / MLP block -> (HF stack, layer index inside the block, HF module name).
_BLOCKS = {
    "encoder.attention": ("encoder", 0, "SelfAttention"),
    "encoder.mlp": ("encoder", 1, "DenseReluDense"),
    "decoder.self_attention": ("decoder", 0, "SelfAttention"),
    "decoder.encoder_decoder_attention": ("decoder", 1, "EncDecAttention"),
    "decoder.mlp": ("decoder", 2, "DenseReluDense"),
}
_ATTENTION_NAMES = {"query": "q", "key": "k", "value": "v", "out": "o"}
_NORMS = {
    "encoder": (("pre_attention_layer_norm", 0), ("pre_mlp_layer_norm", 1)),
    "decoder": (("pre_self_attention_layer_norm", 0), ("pre_cross_attention_layer_norm", 1),
                ("pre_mlp_layer_norm", 2)),
}
# HF keys that may be present but carry no information of their own.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class HFConversionError(ValueError):
  """A Hugging Face directory, config field or weight that cannot be converted."""


# -- configs ------------------------------------------------------------------------------------
def scales_decoder_output(hf_config: Mapping) -> bool:
  """Whether transformers rescales the decoder output by d_model**-0.5 for this config."""
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return bool(hf_config.get("tie_word_embeddings", True))


def t5_config_from_hf(hf_config: Mapping, dropout_rate: float | None = None) -> T5Config:
  """T5Config of a transformers `config.json` dict (T5 / mT5 / ByT5 / original T5)."""
  model_type = hf_config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise HFConversionError(f"config.json: model_type {model_type!r} is not supported; "
                            f"expected one of {list(SUPPORTED_MODEL_TYPES)}")
  proj = hf_config.get("feed_forward_proj", "relu")
  if proj not in FEED_FORWARD:
    raise HFConversionError(
        f"config.json: feed_forward_proj {proj!r} is not supported; expected one of "
        f"{list(FEED_FORWARD)} (T5.1.1/mT5/ByT5 use 'gated-gelu', the original T5 'relu')")
  activations = FEED_FORWARD[proj]
  scaled = scales_decoder_output(hf_config)
  if activations == ("relu",) and not scaled:
    raise HFConversionError(
        "config.json: feed_forward_proj 'relu' with tie_word_embeddings=false (no decoder output "
        "rescaling) is not supported: flix's original-T5 variant ties the embeddings and "
        "rescales the decoder output by d_model**-0.5")
  if activations != ("relu",) and scaled:
    raise HFConversionError(
        f"config.json: feed_forward_proj {proj!r} with tie_word_embeddings=true (decoder output "
        "rescaled by d_model**-0.5) is not supported: flix's T5.1.1/mT5/ByT5 variant has an "
        "untied lm_head and no rescaling (set tie_word_embeddings=false)")
  required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
  missing = [k for k in required if k not in hf_config]
  if missing:
    raise HFConversionError(f"config.json: missing fields {missing}")
  num_decoder_layers = hf_config.get("num_decoder_layers")
  if num_decoder_layers is None:
    num_decoder_layers = hf_config["num_layers"]
  return T5Config(
      vocab_size=int(hf_config["vocab_size"]),
      emb_dim=int(hf_config["d_model"]),
      num_heads=int(hf_config["num_heads"]),
      head_dim=int(hf_config["d_kv"]),
      mlp_dim=int(hf_config["d_ff"]),
      num_encoder_layers=int(hf_config["num_layers"]),
      num_decoder_layers=int(num_decoder_layers),
      mlp_activations=activations,
      logits_via_embedding=activations == ("relu",),
      dropout_rate=float(hf_config.get("dropout_rate", 0.1) if dropout_rate is None
                         else dropout_rate),
      relpos_buckets=int(hf_config.get("relative_attention_num_buckets", 32)),
      relpos_max_distance=int(hf_config.get("relative_attention_max_distance", 128)),
      layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
  )


def hf_config_from_t5(config: T5Config) -> dict:
  """A transformers `config.json` dict for T5ForConditionalGeneration (4.x and 5.x)."""
  gated = config.mlp_activations == ("gelu", "linear")
  tied = config.logits_via_embedding
  if gated == tied:
    raise HFConversionError(
        f"T5Config(mlp_activations={config.mlp_activations}, logits_via_embedding={tied}) has no "
        "transformers equivalent: gated-GELU needs untied logits, ReLU tied ones")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relpos_buckets,
      "relative_attention_max_distance": config.relpos_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "feed_forward_proj": "gated-gelu" if gated else "relu",
      "dense_act_fn": "gelu_new" if gated else "relu",
      "is_gated_act": gated,
      "tie_word_embeddings": tied,
      "scale_decoder_outputs": tied,
      "is_encoder_decoder": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "use_cache": True,
  }


def gin_bindings(config: T5Config, source: str | None = None) -> str:
  """A model gin file for `config`, in the configs/models/*.gin convention.

  Defines the macros MODEL_CONFIG (= @T5Config()) and DROPOUT_RATE, and binds every T5Config
  field as `T5Config.<field> = <Python literal>` (dropout_rate through %DROPOUT_RATE).
  """
  lines = [f"# T5Config of {source or 'a converted Hugging Face model'} (written by flix.convert).",
           "# Required macros: none. Defines: MODEL_CONFIG, DROPOUT_RATE.",
           f"DROPOUT_RATE = {config.dropout_rate!r}",
           "MODEL_CONFIG = @T5Config()"]
  for field, value in json.loads(config.to_json()).items():
    if field == "dropout_rate":
      lines.append("T5Config.dropout_rate = %DROPOUT_RATE")
      continue
    if isinstance(value, list):
      value = tuple(value)
    lines.append(f"T5Config.{field} = {value!r}")
  return "\n".join(lines) + "\n"


# -- weights files ------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Arrays of one safetensors file: read-only views of a memory map (bfloat16 via ml_dtypes)."""
  import ml_dtypes  # Installed with jax.

  data = np.memmap(path, np.uint8, mode="r")  # Tensors are read lazily, as views.
  if len(data) < 8:
    raise HFConversionError(f"{path} is not a safetensors file (too short)")
  (header_len,) = struct.unpack("<Q", data[:8].tobytes())
  try:
    header = json.loads(data[8:8 + header_len].tobytes())
  except ValueError as e:
    raise HFConversionError(f"{path} is not a safetensors file: {e}") from None
  base = 8 + header_len
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype_name = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype_name is None:
      raise HFConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data, dtype, offset=base + start,
                              count=(end - start) // np.dtype(dtype).itemsize
                              ).reshape(info["shape"])
  return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise HFConversionError(f"reading {path} needs torch; install the extras: "
                            "pip install -e '.[hf]' (or convert it to model.safetensors)") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() for k, v in state.items()}


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """All weights of a transformers directory as float32 numpy arrays.

  Looks for model.safetensors, a sharded model.safetensors.index.json, pytorch_model.bin or
  pytorch_model.bin.index.json, in that order.
  """
  def shards(index_name):
    with open(os.path.join(hf_dir, index_name), encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    return sorted(set(weight_map.values()))

  if os.path.isfile(os.path.join(hf_dir, SAFETENSORS)):
    files, reader = [SAFETENSORS], read_safetensors
  elif os.path.isfile(os.path.join(hf_dir, SAFETENSORS_INDEX)):
    files, reader = shards(SAFETENSORS_INDEX), read_safetensors
  elif os.path.isfile(os.path.join(hf_dir, TORCH_BIN)):
    files, reader = [TORCH_BIN], _read_torch_bin
  elif os.path.isfile(os.path.join(hf_dir, TORCH_BIN_INDEX)):
    files, reader = shards(TORCH_BIN_INDEX), _read_torch_bin
  else:
    raise HFConversionError(
        f"{hf_dir}: no weights file: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} or "
        f"{TORCH_BIN_INDEX} (nothing is downloaded: the directory must hold the weights)")
  state = {}
  for name in files:
    path = os.path.join(hf_dir, name)
    if not os.path.isfile(path):
      raise HFConversionError(f"{hf_dir}: weights shard {name} is missing")
    state.update(reader(path))
  return {k: np.array(v, np.float32) for k, v in state.items()}  # Copies: no file views.


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, CONFIG_JSON)
  if not os.path.isfile(path):
    raise HFConversionError(f"{hf_dir}: {CONFIG_JSON} is missing (not a transformers model "
                            "directory?)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# -- parameter trees ----------------------------------------------------------------------------
def _mlp_names(config: T5Config) -> tuple[str, ...]:
  return ("wi", "wo") if config.mlp_activations == ("relu",) else ("wi_0", "wi_1", "wo")


def projection_map(config: T5Config) -> list[tuple[tuple[str, ...], str, str]]:
  """Every projection as (flix param path, HF module path, flix target name)."""
  out = []
  for stack, n_layers in (("encoder", config.num_encoder_layers),
                          ("decoder", config.num_decoder_layers)):
    for i in range(n_layers):
      for block, (hf_stack, layer, module) in _BLOCKS.items():
        if hf_stack != stack:
          continue
        kind = block.split(".")[1]
        names = (_mlp_names(config) if module == "DenseReluDense" else tuple(_ATTENTION_NAMES))
        for name in names:
          hf_name = _ATTENTION_NAMES.get(name, name)
          out.append(((stack, f"layers_{i}", kind, name),
                      f"{stack}.block.{i}.layer.{layer}.{module}.{hf_name}", f"{block}.{name}"))
  return out


def _norm_map(config: T5Config) -> list[tuple[tuple[str, ...], str]]:
  out = []
  for stack, n_layers in (("encoder", config.num_encoder_layers),
                          ("decoder", config.num_decoder_layers)):
    for i in range(n_layers):
      for norm, layer in _NORMS[stack]:
        out.append(((stack, f"layers_{i}", norm, "scale"),
                    f"{stack}.block.{i}.layer.{layer}.layer_norm.weight"))
  out.append((("encoder", "encoder_norm", "scale"), "encoder.final_layer_norm.weight"))
  out.append((("decoder", "decoder_norm", "scale"), "decoder.final_layer_norm.weight"))
  return out


def _relpos_map():
  return [((stack, "relpos_bias", "rel_embedding"),
           f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
          for stack in ("encoder", "decoder")]


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def from_hf_state_dict(state: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """flix base params (plain float32 numpy, no adapters) from a transformers T5 state dict."""
  state = dict(state)
  used = set(_IGNORED)
  params: dict = {}

  def take(key, shape):
    if key not in state:
      raise HFConversionError(f"weights: missing {key} (expected shape {shape})")
    value = np.asarray(state[key], np.float32)
    if value.shape != tuple(shape):
      raise HFConversionError(f"weights: {key} has shape {value.shape}, expected {tuple(shape)} "
                              "from config.json")
    used.add(key)
    return value

  emb_key = "shared.weight"
  if emb_key not in state:
    emb_key = "encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in state else emb_key
  embedding = take(emb_key, (config.vocab_size, config.emb_dim))
  params["token_embedder"] = {"embedding": embedding}
  for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    if key in state:
      if not np.array_equal(take(key, embedding.shape), embedding):
        raise HFConversionError(f"weights: {key} differs from {emb_key}: untied input "
                                "embeddings are not supported")

  inner = config.num_heads * config.head_dim
  for path, hf_module, _ in projection_map(config):
    name = path[-1]
    if name in _ATTENTION_NAMES:
      shape = (config.emb_dim, inner) if name == "out" else (inner, config.emb_dim)
    else:
      shape = (config.emb_dim, config.mlp_dim) if name == "wo" else (config.mlp_dim,
                                                                    config.emb_dim)
    _set(params, path + ("kernel",), np.ascontiguousarray(take(f"{hf_module}.weight", shape).T))
  for path, key in _norm_map(config):
    _set(params, path, take(key, (config.emb_dim,)))
  for path, key in _relpos_map():
    _set(params, path,
         np.ascontiguousarray(take(key, (config.relpos_buckets, config.num_heads)).T))

  head = state.get("lm_head.weight")
  if head is not None:
    used.add("lm_head.weight")
  if config.logits_via_embedding:
    if head is not None and not np.array_equal(np.asarray(head, np.float32), embedding):
      raise HFConversionError(
          "weights: lm_head.weight differs from shared.weight, but the config ties them "
          "(tie_word_embeddings / feed_forward_proj 'relu'): an untied original-T5 model is "
          "not supported")
  else:
    if head is None:
      raise HFConversionError("weights: missing lm_head.weight (the config unties the output "
                              "projection: tie_word_embeddings=false)")
    head = take("lm_head.weight", (config.vocab_size, config.emb_dim))
    params["decoder"]["logits_dense"] = {"kernel": np.ascontiguousarray(head.T)}
  unexpected = sorted(set(state) - used)
  if unexpected:
    raise HFConversionError(f"weights: unexpected tensors for a T5ForConditionalGeneration: "
                            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
  return params


def load_hf(hf_dir: str, dropout_rate: float | None = None) -> tuple[T5Config, dict]:
  """(T5Config, plain float32 params) of a local transformers T5 / mT5 / ByT5 directory.

  `dropout_rate` overrides the config's; the params have no adapters (use them as a base or
  initial checkpoint, e.g. `flix.checkpoints.save_model(path, params, config)`).
  """
  hf_config = read_hf_config(hf_dir)
  config = t5_config_from_hf(hf_config, dropout_rate)
  state = read_hf_weights(hf_dir)
  if (config.logits_via_embedding is False and "lm_head.weight" not in state
      and hf_config.get("tie_word_embeddings", True) and "shared.weight" in state):
    # transformers 5.x ties lm_head to shared for every T5 and then leaves it out of the file.
    state["lm_head.weight"] = state["shared.weight"]
  return config, from_hf_state_dict(state, config)


def to_hf_state_dict(params, config: T5Config) -> dict[str, np.ndarray]:
  """transformers T5ForConditionalGeneration state dict (float32 numpy) of flix base params.

  Adapter leaves are not allowed: merge a combination first (`merge_params`) or drop them
  (`flix.checkpoints.strip_adapters`). Tied input embeddings are written once, as `shared.weight`.
  """
  params = nn.unbox(params)
  adapters = [".".join(p) for p, _, _ in projection_map(config)
              if flix_merge.is_adapted(_get_or_none(params, p))]
  if adapters:
    raise HFConversionError(f"params carry adapters (e.g. at {adapters[0]}); merge a feature "
                            "combination (merge_params) or drop them (checkpoints.strip_adapters) first")
  out = {}

  def put(key, value):
    out[key] = np.ascontiguousarray(np.asarray(value, np.float32))

  put("shared.weight", params["token_embedder"]["embedding"])
  for path, hf_module, _ in projection_map(config):
    put(f"{hf_module}.weight", np.asarray(_get(params, path + ("kernel",))).T)
  for path, key in _norm_map(config):
    put(key, _get(params, path))
  for path, key in _relpos_map():
    put(key, np.asarray(_get(params, path)).T)
  if not config.logits_via_embedding:
    put("lm_head.weight", np.asarray(params["decoder"]["logits_dense"]["kernel"]).T)
  return out


def _get_or_none(tree, path):
  try:
    return _get(tree, path)
  except (KeyError, TypeError):
    return None


def merge_params(params, flix: FlixConfig, ids) -> dict:
  """Base params with combination `ids` merged exactly (`flix.merge.merge_params`), as numpy."""
  _check_full_tables(params, flix)
  merged = flix_merge.merge_params(params, flix, np.asarray(ids, np.int32))
  return _to_numpy(merged)


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def save_hf(out_dir: str, params, config: T5Config, *, overwrite: bool = False) -> str:
  """Writes config.json + model.safetensors loadable by T5ForConditionalGeneration."""
  from safetensors.numpy import save_file

  state = to_hf_state_dict(params, config)
  with atomic_directory(out_dir, overwrite) as tmp:
    with open(os.path.join(tmp, CONFIG_JSON), "w", encoding="utf-8") as f:
      json.dump(hf_config_from_t5(config), f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
      json.dump({"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    save_file(state, os.path.join(tmp, SAFETENSORS), metadata={"format": "pt"})
  return os.path.abspath(out_dir)


# -- feature combinations -----------------------------------------------------------------------
# -- PEFT ---------------------------------------------------------------------------------------
def _check_full_tables(params, flix: FlixConfig) -> None:
  params = nn.unbox(params)
  for t in flix.space.types:
    for leaf in _find_leaves(params, a_name(t.name)):
      if leaf.shape[0] != t.size:
        raise HFConversionError(
            f"adapter table {a_name(t.name)} holds {leaf.shape[0]} rows but feature type "
            f"{t.name!r} has {t.size} values (compact row_limit tables cannot be exported)")


def _find_leaves(tree, name):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k == name and not isinstance(v, dict):
        yield v
      else:
        yield from _find_leaves(v, name)


def combination_lora(layer_params, flix: FlixConfig, ids) -> tuple[np.ndarray, np.ndarray] | None:
  """One projection's combination as a single LoRA pair (A `[R, d_in]`, B `[R, d_out]`), A^T B = dW_c.

  The A's and B's of the active features (and the shared adapter) are concatenated along the
  rank axis, each feature's scale s_t folded into its rows of B. R is the same for every
  projection (a feature missing from a layer gets zero columns). None if R == 0.
  """
  kernel = np.asarray(layer_params["kernel"])
  d_in, d_out = kernel.shape
  a_parts, b_parts = [], []
  pairs = []
  if flix.space.shared_rank:
    pairs.append(("shared", flix.space.shared_rank, None))
  for t, i in zip(flix.space.types, np.asarray(ids)):
    if i != INACTIVE:
      pairs.append((t.name, t.rank, int(i)))
  for name, rank, row in pairs:
    a_key, b_key = a_name(name), b_name(name)
    if a_key in layer_params:
      a, b = np.asarray(layer_params[a_key]), np.asarray(layer_params[b_key])
      if row is not None:
        a, b = a[row], b[row]
      a_parts.append(a.astype(np.float32))
      b_parts.append((b * np.float32(flix.scale(rank))).astype(np.float32))
    else:
      a_parts.append(np.zeros((rank, d_in), np.float32))
      b_parts.append(np.zeros((rank, d_out), np.float32))
  if not a_parts:
    return None
  return np.concatenate(a_parts, 0), np.concatenate(b_parts, 0)


def combination_rank(flix: FlixConfig, ids) -> int:
  """Rank of one combination's update: active features' ranks plus the shared rank."""
  return flix.space.shared_rank + sum(t.rank for t, i in zip(flix.space.types, np.asarray(ids))
                                      if i != INACTIVE)


def peft_adapter(params, config: T5Config, flix: FlixConfig, ids, *,
                 base_model_name_or_path: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json dict, adapter_model.safetensors tensors) of combination `ids`.

  PEFT LoRA with r = lora_alpha = R (the combination rank), so PEFT's scale is 1 and each
  feature's scale lives in its rows of lora_B: the PEFT model computes x W^T + x A^T B^T with
  B A = dW_c^T, exactly the flix model with features `ids`.
  """
  params = nn.unbox(params)
  _check_full_tables(params, flix)
  ids = np.asarray(ids, np.int32)
  flix.space.check_ids(ids[None])
  rank = combination_rank(flix, ids)
  if rank == 0:
    raise HFConversionError("the combination has no active feature and the model no shared "
                            "adapter: there is nothing to export (use to-hf for the base)")
  tensors, modules = {}, []
  for path, hf_module, target in projection_map(config):
    layer = _get_or_none(params, path)
    if not flix_merge.is_adapted(layer):
      continue
    a, b = combination_lora(layer, flix, ids)  # Not None: rank > 0.
    prefix = f"base_model.model.{hf_module}"
    tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a)  # (R, in)
    tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.T)  # (out, R)
    modules.append(hf_module)
  if not modules:
    raise HFConversionError("the checkpoint has no adapted projection to export")
  adapter_config = {
      "peft_type": "LORA",
      "task_type": "SEQ_2_SEQ_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": rank,
      "lora_alpha": rank,
      "use_rslora": False,
      "target_modules": _target_modules(config, modules),
      "lora_dropout": 0.0,
      "bias": "none",
      "fan_in_fan_out": False,
      "modules_to_save": None,
      "init_lora_weights": True,
      "use_dora": False,
      "inference_mode": True,
  }
  return adapter_config, tensors


def _target_modules(config: T5Config, modules: list[str]) -> list[str]:
  """Short module names (q, wo, ...) if they pick exactly `modules`, else the full paths."""
  all_modules = [m for _, m, _ in projection_map(config)]
  short = sorted({m.rsplit(".", 1)[1] for m in modules})
  if {m for m in all_modules if m.rsplit(".", 1)[1] in short} == set(modules):
    return short
  return sorted(modules)


def save_peft(out_dir: str, params, config: T5Config, flix: FlixConfig, ids, *,
              base_model_name_or_path: str | None = None, overwrite: bool = False) -> str:
  """Writes a PEFT LoRA adapter directory for combination `ids` (see `peft_adapter`)."""
  from safetensors.numpy import save_file

  adapter_config, tensors = peft_adapter(params, config, flix, ids,
                                         base_model_name_or_path=base_model_name_or_path)
  with atomic_directory(out_dir, overwrite) as tmp:
    with open(os.path.join(tmp, PEFT_CONFIG), "w", encoding="utf-8") as f:
      json.dump(adapter_config, f, indent=2)
    save_file(tensors, os.path.join(tmp, PEFT_WEIGHTS), metadata={"format": "pt"})
  return os.path.abspath(out_dir)


__all__ = [
    "HFConversionError", "t5_config_from_hf", "hf_config_from_t5", "gin_bindings", "load_hf",
    "read_hf_weights", "read_hf_config", "read_safetensors", "from_hf_state_dict",
    "to_hf_state_dict", "save_hf", "merge_params", "combination_lora", "combination_rank", "peft_adapter", "save_peft",
    "projection_map", "UnknownFeatureError",
]
