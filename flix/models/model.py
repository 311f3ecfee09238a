"""Model objects (T5X-style): what a network is used for, between the network and the trainer.

A model object wraps a Flax network and owns everything that depends on the model family:
  loss_fn               the training loss of a model batch (network dropout, feature dropout);
  score_batch           the log-likelihood of each example's targets;
  predict_batch         decoding a model batch (greedy / beam / sampling with a KV cache);
  decode                the same from tokens and feature ids, one per family;
  get_initial_variables fresh variables for given input shapes;
  inputs_batch          the model batch that decodes raw tokenized inputs (inference).
The trainer, evaluator, inference, benches and demo use only these. Families:
`EncoderDecoderModel` (T5) and `DecoderOnlyModel` (`DecoderLM`); `make_model` picks one from
the config's type. The data layer builds their batches (`flix.data.converter.feature_converter`
picks the family's seqio converter); models never import data.

Packed batches (the converters' pack=True; `flix.models.segments`) carry seqio's segment ids
(and the decoder-only model's positions): `logits`, hence `loss_fn`, attend within each
example's segment, so a packed row's loss is the sum of its examples' losses. Scoring and
decoding take unpacked batches only.

`feature_ids(batch)` is the one place where per-example feature ids leave a batch; everything
downstream (feature dropout, row compaction, beams) receives ids from it.

Feature dropout (the method's one knob, `feature_dropout`) switches each (example, type) feature
off with that probability in training. An example whose features all drop has no adapter at
all when there is no shared adapter: adapters are all that flix trains, so it contributes no
gradient. Such examples get zero loss weight, so they do not dilute the loss normaliser (which
would quietly lower the effective learning rate by about rate^n_types); see `loss_fn`.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from flix.decoding import EOS_ID, DecodeOptions, DecodeResult
from flix.config import FlixConfig
from flix.features import FEATURE_IDS, INACTIVE, check_dropout_rate, feature_dropout
from flix.models import decode_fns, losses, remat, segments
from flix.models.decoder import DecoderConfig, DecoderLM
from flix.models.t5 import T5, T5Config

Batch = Mapping[str, jax.Array]


def split_rng(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(network dropout rng, feature dropout rng) of one training step's rng."""
  dropout_rng, features_rng = jax.random.split(rng)
  return dropout_rng, features_rng


class BaseModel(abc.ABC):
  """A network plus its loss, scoring, decoding and initialisation.

  Attributes:
    module: the Flax network (its `flix` attribute holds the adapter config, or None).
    feature_dropout: per (example, type) drop probability in training, in [0, 1).
    z_loss, loss_normalizer: see `flix.models.losses.cross_entropy`.
  """

  def __init__(self, module: nn.Module, *, feature_dropout: float = 0.0, z_loss: float = 1e-4,
               loss_normalizer: float | str | None = losses.NUM_REAL_TARGET_TOKENS):
    check_dropout_rate(feature_dropout)
    if feature_dropout and not getattr(module, "n_types", 0):
      raise ValueError(f"feature_dropout {feature_dropout} needs feature adapters, but this model "
                       "has none (method 'lora' or 'full'); set it to 0")
    if module.flix is not None:
      module.flix.check_targets(module.projection_names(module.config))
    self.module = module
    self.feature_dropout = float(feature_dropout)
    self.z_loss = z_loss
    self.loss_normalizer = loss_normalizer

  # -- adapters and features --------------------------------------------------------------------
  @property
  def flix(self) -> FlixConfig | None:
    return self.module.flix

  @property
  def n_types(self) -> int:
    """Feature types the adapters read (0: the model needs no feature ids)."""
    return self.flix.space.n_types if self.flix is not None else 0

  def replace(self, **changes) -> "BaseModel":
    """The same model object with its network's fields changed, e.g. `flix=...`."""
    new = object.__new__(type(self))
    new.__dict__.update(self.__dict__)
    new.module = self.module.clone(**changes)
    return new

  def with_row_limit(self, rows: int | None) -> "BaseModel":
    """The model on compact feature tables of `rows` rows (`flix.rows`), or full ones (None)."""
    return self.replace(flix=self.flix.replace(row_limit=rows))

  def feature_ids(self, batch: Batch) -> jax.Array | None:
    """The batch's feature ids int `[batch, n_types]`, or None for a model without feature
    adapters. The one place where feature ids leave a batch."""
    if not self.n_types:
      return None
    if FEATURE_IDS not in batch:
      raise ValueError(f"the model has feature types {list(self.flix.space.names)}, but the "
                       f"batch has no {FEATURE_IDS!r} (features: {sorted(batch)})")
    return batch[FEATURE_IDS]

  def training_feature_ids(self, batch: Batch, rng: jax.Array) -> jax.Array | None:
    """`feature_ids(batch)` after feature dropout with the feature half of `rng` (split_rng)."""
    ids = self.feature_ids(batch)
    if ids is None or not self.feature_dropout:
      return ids
    return feature_dropout(ids, split_rng(rng)[1], self.feature_dropout)

  # -- what a family implements --------------------------------------------------------------------
  @abc.abstractmethod
  def logits(self, params, batch: Batch, feature_ids: jax.Array | None,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits `[batch, targets_length, vocab]` (float32); dropout iff an rng."""

  @abc.abstractmethod
  def predict_batch(self, params, batch: Batch, options: DecodeOptions,
                    rng: jax.Array | None = None) -> DecodeResult:
    """Decodes every example of `batch` with its own features (the family's `decode`)."""

  @abc.abstractmethod
  def get_initial_variables(self, rng: jax.Array,
                            input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict:
    """{"params": boxed (logically partitioned) params} for batches of `input_shapes`."""

  @abc.abstractmethod
  def inputs_batch(self, input_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The model batch (without feature ids) that `predict_batch` decodes for tokenized
    inputs int `[batch, in_len]` (EOS-terminated, 0-padded), as the converter would build it."""

  # -- shared by the families -------------------------------------------------------------------
  def loss_fn(self, params, batch: Batch, rng: jax.Array | None, *,
              feature_ids: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """(loss, metrics) of `batch`.

    rng None: evaluation (no dropout of any kind). Otherwise training: network dropout and
    feature dropout from `split_rng(rng)`, and examples left without any active adapter (every
    feature dropped, no shared adapter) get zero loss weight.
    feature_ids: ids to use instead (e.g. renumbered into compact tables by a row-sparse step);
      they must already include feature dropout.
    """
    dropout_rng = None
    if rng is not None:
      dropout_rng = split_rng(rng)[0]
      if feature_ids is None:
        feature_ids = self.training_feature_ids(batch, rng)
    elif feature_ids is None:
      feature_ids = self.feature_ids(batch)
    weights = batch["decoder_loss_weights"]
    if rng is not None and self.feature_dropout and not self.flix.shared_rank:
      adapted = jnp.any(feature_ids != INACTIVE, axis=1)
      weights = weights * adapted[:, None].astype(weights.dtype)
    logits = self.logits(params, batch, feature_ids, dropout_rng)
    return losses.cross_entropy(logits, batch["decoder_target_tokens"], weights,
                                z_loss=self.z_loss, normalizer=self.loss_normalizer)

  def score_batch(self, params, batch: Batch) -> jax.Array:
    """Log-likelihood `[batch]` of each example's targets (summed over weighted positions)."""
    segments.refuse_packed(batch, "score_batch")
    logits = self.logits(params, batch, self.feature_ids(batch))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    token = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
    return jnp.sum(token * batch["decoder_loss_weights"], axis=-1)

  def abstract_params(self) -> dict:
    """Plain param shapes (jax.ShapeDtypeStruct leaves), traced without initialising."""
    return nn.unbox(jax.eval_shape(lambda: self.get_initial_variables(jax.random.key(0))
                                   )["params"])

  def init_params(self, rng: jax.Array) -> dict:
    """Boxed params for the smallest batch (the shapes do not depend on it)."""
    return self.get_initial_variables(rng)["params"]


@gin.configurable
class EncoderDecoderModel(BaseModel):
  """A T5-family encoder-decoder (`flix.models.t5.T5`).

  Batches: encoder_input_tokens `[b, in_len]`, decoder_input_tokens / decoder_target_tokens /
  decoder_loss_weights `[b, out_len]`, feature_ids `[b, n_types]`
  (`FlixEncDecFeatureConverter`); packed: also encoder_segment_ids and decoder_segment_ids.
  """

  PACKED_FEATURES = (segments.ENCODER_SEGMENT_IDS, segments.DECODER_SEGMENT_IDS)

  def logits(self, params, batch, feature_ids, dropout_rng=None):
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], feature_ids,
                             **segments.packed_features(batch, self.PACKED_FEATURES),
                             enable_dropout=dropout_rng is not None, rngs=rngs)

  def decode(self, params, encoder_input_tokens, feature_ids=None, *, options: DecodeOptions,
             rng: jax.Array | None = None) -> DecodeResult:
    """Decodes `encoder_input_tokens` with the KV cache (`flix.decoding`).

    Args:
      params: the network's params (boxed or plain; full tables, `flix.row_limit` None).
      encoder_input_tokens: int `[batch, input_length]`, 0-padded.
      feature_ids: int `[batch, n_types]` (INACTIVE = -1 switches a type off), one row per
        example; required when the model has feature types, ignored by a model without FLix.
      options: max_length, method ("greedy", "beam", "sample"), beams, alpha, temperature,
        top_k, num_samples, eos_id (`DecodeOptions`).
      rng: PRNG key, required for sampling (the same key gives the same samples).

    Returns:
      DecodeResult with tokens `[batch, (num_samples,) max_length]` and scores.
    """
    return decode_fns.encoder_decoder(self.module, params, encoder_input_tokens, feature_ids,
                                      options, rng)

  def sequence_log_probs(self, params, encoder_input_tokens, feature_ids, tokens,
                         eos_id: int = EOS_ID) -> jax.Array:
    """Teacher-forced log-probability `[batch]` of decodes `[batch, length]` (PAD after EOS),
    summed up to and including the first EOS: what greedy and sampling report as scores."""
    return decode_fns.sequence_log_probs(self.module, params, encoder_input_tokens, feature_ids,
                                         tokens, eos_id)

  def predict_batch(self, params, batch, options, rng=None):
    segments.refuse_packed(batch, "predict_batch")
    ids = self.feature_ids(batch)
    return self.decode(params, batch["encoder_input_tokens"],
                       None if ids is None else np.asarray(ids), options=options, rng=rng)

  def get_initial_variables(self, rng, input_shapes=None):
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8),
              **dict(input_shapes or {})}
    batch = shapes["encoder_input_tokens"][0]
    ids = jnp.zeros((batch, self.n_types), jnp.int32)
    return self.module.init(rng, jnp.ones(shapes["encoder_input_tokens"], jnp.int32),
                            jnp.ones(shapes["decoder_input_tokens"], jnp.int32), ids)

  def inputs_batch(self, input_tokens):
    return {"encoder_input_tokens": np.asarray(input_tokens, np.int32)}


@gin.configurable
class DecoderOnlyModel(BaseModel):
  """A decoder-only LM (`flix.models.decoder.DecoderLM`: Llama, Mistral, Qwen2, Gemma style).

  Batches (`FlixPrefixLMFeatureConverter`, T5X's prefix LM): decoder_input_tokens /
  decoder_target_tokens / decoder_loss_weights / decoder_causal_attention `[b, in_len +
  out_len]` (the inputs and targets concatenated; loss on the targets only), feature_ids
  `[b, n_types]`; packed: also decoder_segment_ids and decoder_positions (each segment's
  rotary positions; decoder_causal_attention marks each segment's prompt). `predict_batch`
  decodes the prompt each row's decoder_causal_attention marks (start token, inputs, EOS),
  prefilled into the KV cache once.

  inputs_bidirectional_attention: the prompt attends to itself in both directions (T5X's
    option of the same name); default fully causal, as the Hugging Face models were trained.
  """

  def __init__(self, module: DecoderLM, *, inputs_bidirectional_attention: bool = False,
               **kwargs):
    super().__init__(module, **kwargs)
    self.inputs_bidirectional_attention = bool(inputs_bidirectional_attention)

  def logits(self, params, batch, feature_ids, dropout_rng=None):
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    prefix = None
    if self.inputs_bidirectional_attention:
      prefix = batch["decoder_causal_attention"] > 0
    packed = segments.packed_features(batch, (segments.DECODER_SEGMENT_IDS,
                                              segments.DECODER_POSITIONS))
    rows = {"segment_ids": packed[segments.DECODER_SEGMENT_IDS],
            "positions": packed[segments.DECODER_POSITIONS]} if packed else {}
    return self.module.apply({"params": params}, batch["decoder_input_tokens"], feature_ids,
                             prefix=prefix, **rows, enable_dropout=dropout_rng is not None,
                             rngs=rngs)

  def decode(self, params, prompt_tokens, prompt_lengths=None, feature_ids=None, *,
             options: DecodeOptions, rng: jax.Array | None = None) -> DecodeResult:
    """Continues prompts with the KV cache (`flix.decoding`): options.max_length new tokens.

    Args:
      params: the network's params (boxed or plain; full tables, `flix.row_limit` None).
      prompt_tokens: int `[batch, P]`, each prompt right-padded (what the prefix-LM converter
        gives: the start token, the inputs, their EOS).
      prompt_lengths: int `[batch]` in 1..P (default: every prompt fills P). The padding is
        never attended to, and each prompt's positions start at 0.
      feature_ids, options, rng: as `EncoderDecoderModel.decode`.

    The prompt is prefilled in one call (each row left-aligned to end at position P - 1),
    attending to itself in both directions iff `inputs_bidirectional_attention`; the first token
    comes from its last position's logits, then one cached position per step. PAD after EOS,
    scores as `EncoderDecoderModel.decode`.
    """
    return decode_fns.decoder_only(self.module, params, prompt_tokens, prompt_lengths,
                                   feature_ids, options, rng,
                                   bidirectional=self.inputs_bidirectional_attention)

  def predict_batch(self, params, batch, options, rng=None):
    segments.refuse_packed(batch, "predict_batch")
    ids = self.feature_ids(batch)
    prompts, lengths = self.prompts(batch)
    return self.decode(params, prompts, lengths, None if ids is None else np.asarray(ids),
                       options=options, rng=rng)

  @staticmethod
  def prompts(batch) -> tuple[np.ndarray, np.ndarray]:
    """(decoder_input_tokens `[b, L]`, prompt lengths `[b]`): each row's prompt is its first
    sum(decoder_causal_attention) tokens (at least the start token: padding rows have none)."""
    tokens = np.asarray(batch["decoder_input_tokens"], np.int32)
    lengths = np.asarray(batch["decoder_causal_attention"]).astype(bool).sum(axis=1)
    return tokens, np.maximum(lengths, 1).astype(np.int32)

  def get_initial_variables(self, rng, input_shapes=None):
    shapes = {"decoder_input_tokens": (1, 8), **dict(input_shapes or {})}
    batch = shapes["decoder_input_tokens"][0]
    ids = jnp.zeros((batch, self.n_types), jnp.int32)
    return self.module.init(rng, jnp.ones(shapes["decoder_input_tokens"], jnp.int32), ids)

  def inputs_batch(self, input_tokens):
    """decoder_input_tokens = [start (0), inputs (with EOS), 0...] `[b, in_len + 1]` and
    decoder_causal_attention = 1 on those, as the prefix-LM converter writes a prompt."""
    inputs = np.asarray(input_tokens, np.int32)
    tokens = np.pad(inputs, ((0, 0), (1, 0)))
    lengths = 1 + (inputs != 0).sum(axis=1)
    causal = (np.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    return {"decoder_input_tokens": tokens, "decoder_causal_attention": causal}


def make_model(model_config: Any, flix: FlixConfig | None = None, *,
               remat_policy: str = "none", scan_layers: bool = False, **kwargs) -> BaseModel:
  """The model object of `model_config`'s family with adapters `flix`: EncoderDecoderModel for
  a T5Config, DecoderOnlyModel for a DecoderConfig.

  remat_policy: the layer blocks' rematerialisation in training (`flix.models.remat`).
  scan_layers: each layer stack as one `nn.scan` (`flix.models.scan`; same parameter tree).
  kwargs: BaseModel options (feature_dropout, z_loss, loss_normalizer).
  """
  remat.check_policy(remat_policy)
  if isinstance(model_config, T5Config):
    return EncoderDecoderModel(T5(model_config, flix, remat_policy, scan_layers), **kwargs)
  if isinstance(model_config, DecoderConfig):
    return DecoderOnlyModel(DecoderLM(model_config, flix, remat_policy, scan_layers), **kwargs)
  raise ValueError(f"unknown model config {type(model_config).__name__}: expected a T5Config or "
                   "a DecoderConfig")
