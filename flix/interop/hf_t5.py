"""transformers T5ForConditionalGeneration (T5.1.1 / mT5 / ByT5 / original T5) <-> flix T5.

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

from typing import Mapping

import numpy as np

from flix.errors import HFConversionError
from flix.interop.hf_state import LeafMap, StateReader, read_leaves, write_leaves
from flix.models.t5 import T5, T5Config, abstract_params

ARCHITECTURES = ("T5ForConditionalGeneration", "MT5ForConditionalGeneration")
SUPPORTED_MODEL_TYPES = ("t5", "mt5")
PEFT_TASK_TYPE = "SEQ_2_SEQ_LM"
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
_EMBEDDING = ("token_embedder", "embedding")
_LM_HEAD = "lm_head.weight"


# -- configs ------------------------------------------------------------------------------------
def scales_decoder_output(hf_config: Mapping) -> bool:
  """Whether transformers rescales the decoder output by d_model**-0.5 for this config."""
  if "scale_decoder_outputs" in hf_config:
    return bool(hf_config["scale_decoder_outputs"])
  return bool(hf_config.get("tie_word_embeddings", True))


def config_from_hf(hf_config: Mapping, dropout_rate: float | None = None) -> T5Config:
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


def hf_config(config: T5Config) -> dict:
  """A transformers `config.json` dict for T5ForConditionalGeneration (4.x and 5.x)."""
  gated = config.mlp_activations == ("gelu", "linear")
  tied = config.logits_via_embedding
  if gated == tied:
    raise HFConversionError(
        f"T5Config(mlp_activations={config.mlp_activations}, logits_via_embedding={tied}) has no "
        "transformers equivalent: gated-GELU needs untied logits, ReLU tied ones")
  return {
      "architectures": [ARCHITECTURES[0]],
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


def generation_config(config: T5Config) -> dict:
  """`generation_config.json`: T5's start (0), EOS (1) and PAD (0) ids."""
  del config
  return {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


# -- parameter trees ----------------------------------------------------------------------------
def _mlp_names(config: T5Config) -> tuple[str, ...]:
  return ("wi", "wo") if config.mlp_activations == ("relu",) else ("wi_0", "wi_1", "wo")


def _stacks(config: T5Config):
  return (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers))


def projection_map(config: T5Config) -> list[tuple[tuple[str, ...], str, str]]:
  """Every projection as (flix param path, HF module path, flix target name)."""
  out = []
  for stack, n_layers in _stacks(config):
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


def leaf_map(config: T5Config, embedding_key: str = "shared.weight") -> LeafMap:
  """Every base parameter as (flix path, HF key, transposed); see the module docstring."""
  out = [(_EMBEDDING, embedding_key, False)]
  out += [(path + ("kernel",), f"{module}.weight", True)
          for path, module, _ in projection_map(config)]
  for stack, n_layers in _stacks(config):
    for i in range(n_layers):
      for norm, layer in _NORMS[stack]:
        out.append(((stack, f"layers_{i}", norm, "scale"),
                    f"{stack}.block.{i}.layer.{layer}.layer_norm.weight", False))
  out.append((("encoder", "encoder_norm", "scale"), "encoder.final_layer_norm.weight", False))
  out.append((("decoder", "decoder_norm", "scale"), "decoder.final_layer_norm.weight", False))
  out += [((stack, "relpos_bias", "rel_embedding"),
           f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
          for stack in ("encoder", "decoder")]
  if not config.logits_via_embedding:
    out.append((("decoder", "logits_dense", "kernel"), _LM_HEAD, True))
  return out


def from_state_dict(state: Mapping[str, np.ndarray], config: T5Config) -> dict:
  """flix base params (plain float32 numpy, no adapters) from a transformers T5 state dict."""
  reader = StateReader(state, ARCHITECTURES[0], _IGNORED)
  emb_key = "shared.weight"
  if emb_key not in reader and "encoder.embed_tokens.weight" in reader:
    emb_key = "encoder.embed_tokens.weight"
  if not config.logits_via_embedding:
    reader.require(_LM_HEAD, "the config unties the output projection: "
                   "tie_word_embeddings=false")
  params = read_leaves(reader, leaf_map(config, emb_key), abstract_params(T5(config)))
  embedding = params["token_embedder"]["embedding"]
  for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    reader.take_tied(key, embedding, "untied input embeddings are not supported")
  if config.logits_via_embedding:
    reader.take_tied(_LM_HEAD, embedding,
                     "the config ties it to shared.weight (tie_word_embeddings / "
                     "feed_forward_proj 'relu'): an untied original-T5 model is not supported")
  reader.check_all_used()
  return params


def load_state(hf_config: Mapping, config: T5Config, state: dict[str, np.ndarray]) -> dict:
  """`from_state_dict`, after transformers 5.x's habit of leaving a tied-on-load lm_head out."""
  if (config.logits_via_embedding is False and _LM_HEAD not in state
      and hf_config.get("tie_word_embeddings", True) and "shared.weight" in state):
    # transformers 5.x ties lm_head to shared for every T5 and then leaves it out of the file.
    state = {**state, _LM_HEAD: state["shared.weight"]}
  return from_state_dict(state, config)


def to_state_dict(params, config: T5Config) -> dict[str, np.ndarray]:
  """transformers T5ForConditionalGeneration state dict (float32 numpy) of flix base params.

  Adapter leaves are not allowed: merge a combination first (`peft_export.merge_params`) or drop
  them (`flix.checkpoints.strip_adapters`). Tied input embeddings are written once, as
  `shared.weight`.
  """
  return write_leaves(params, leaf_map(config))
