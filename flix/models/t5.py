"""T5.1.1 / mT5 / ByT5 (and original T5) encoder-decoder in flax.linen, with FLix adapters.

The parameter tree follows T5X's (token_embedder/embedding, encoder/layers_i/attention/query/kernel,
decoder/logits_dense/kernel, ...), so T5X checkpoints map one to one (`flix.interop.t5x` reads
them); adapter parameters sit next to the kernel they adapt (e.g. .../attention/query/lora_a_task).

Feature ids enter as int `[batch, n_types]` and reach every adapted projection unchanged.
Packed rows (`flix.models.segments`): with segment ids, encoder self-attention stays within a
segment, decoder self-attention is causal within a segment and cross-attention sees only the
encoder segment of the same example; relative position biases depend only on position
differences, which within a segment are those of the unpacked example (as in T5X).
Beam search: encoder outputs are expanded per beam as `[batch * beams, ...]` with each example's
rows adjacent (T5X's flat_batch_beam_expand); feature ids must be expanded the same way, which is
what `flix.decoding.expand_for_beams` does (`jnp.repeat(ids, beams, axis=0)`).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.layers import FAN_IN_NORMAL, constrain, projections
from flix.models import remat, scan
from flix.models.segments import same_segment


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes and variant switches of a T5-family network.

  `mlp_activations=("gelu", "linear")` with untied logits is T5.1.1 / mT5 / ByT5;
  `("relu",)` with `logits_via_embedding=True` is the original T5.
  """

  vocab_size: int = 384
  emb_dim: int = 256
  num_heads: int = 4
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 4
  num_decoder_layers: int = 4
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  dropout_rate: float = 0.1
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
    if self.mlp_activations not in (("gelu", "linear"), ("relu",)):
      raise ValueError(f"unsupported mlp_activations {self.mlp_activations}: expected "
                       "('gelu', 'linear') for T5.1.1/mT5/ByT5 or ('relu',) for original T5")

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> "T5Config":
    return cls(**json.loads(text))


def relative_position_buckets(q_positions: np.ndarray, k_positions: np.ndarray, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's log-spaced relative position buckets `[q, k]` (static: computed with numpy)."""
  relative = k_positions[None, :] - q_positions[:, None]
  n = -relative
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  # float32 throughout and no eps, as mesh-tensorflow and transformers compute it: T5X's
  # `+ eps` (and float64 promotion under numpy 2) moves a few positions to another bucket in
  # some (num_buckets, max_distance) settings. n < max_exact is replaced below, so log(0) is
  # never used (np.maximum keeps it finite).
  f32 = np.float32
  large = max_exact + (np.log(np.maximum(n, 1).astype(f32) / f32(max_exact)) /
                       f32(np.log(max_distance / max_exact)) * f32(num_buckets - max_exact)
                       ).astype(n.dtype)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(n < max_exact, n, large)


class RelativePositionBiases(nn.Module):
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: np.ndarray, k_positions: np.ndarray) -> jax.Array:
    """Returns attention biases `[1, heads, q, k]`."""
    table = self.param("rel_embedding", nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    buckets = relative_position_buckets(q_positions, k_positions, self.bidirectional,
                                        self.num_buckets, self.max_distance)
    return jnp.take(table, jnp.asarray(buckets), axis=1)[None]


class RMSNorm(nn.Module):
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head dot-product attention (no 1/sqrt(d) scaling: it is folded into the query init).

  With `decode=True` keys/values are cached in the "cache" collection, one position per call.
  """

  config: T5Config
  block: str  # e.g. "encoder.attention"; names the adapter targets.
  flix: FlixConfig | None = None

  @nn.compact
  def __call__(self, x_q, x_kv, feature_ids, mask, bias, *, deterministic: bool,
               decode: bool = False):
    """x_q `[b, q, emb]`, x_kv `[b, k, emb]`, mask broadcastable to `[b, h, q, k]` (bool)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    inner = cfg.num_heads * cfg.head_dim
    query_init = lambda *a: FAN_IN_NORMAL(*a) / np.sqrt(cfg.head_dim)
    proj = projections(self.flix, self.block, dtype, FAN_IN_NORMAL)
    q = proj(inner, ("embed", "joined_kv"), "query", kernel_init=query_init)(x_q, feature_ids)
    k = proj(inner, ("embed", "joined_kv"), "key")(x_kv, feature_ids)
    v = proj(inner, ("embed", "joined_kv"), "value")(x_kv, feature_ids)
    split = lambda t: t.reshape(*t.shape[:2], cfg.num_heads, cfg.head_dim)
    q, k, v = split(q), split(k), split(v)

    if decode:
      k, v, mask = self._update_cache(k, v, mask)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits).astype(dtype)
    weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(*x_q.shape[:2], inner)
    return proj(cfg.emb_dim, ("joined_kv", "embed"), "out")(out, feature_ids)

  def _update_cache(self, k, v, mask):
    """Writes this step's key/value at the cache index; attends to positions <= index."""
    is_initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:  # The init pass only creates the cache at full length.
      return k, v, mask
    if k.shape[1] != 1:
      raise ValueError(f"decode=True takes one position per call, got length {k.shape[1]}")
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + 1
    visible = (jnp.arange(cached_k.value.shape[1]) <= i)[None, None, None, :]
    return cached_k.value, cached_v.value, visible


class MLP(nn.Module):
  config: T5Config
  block: str
  flix: FlixConfig | None = None

  @nn.compact
  def __call__(self, x, feature_ids, *, deterministic: bool):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    proj = projections(self.flix, self.block, dtype)
    if cfg.mlp_activations == ("relu",):
      names_acts = (("wi", nn.relu),)
    else:
      names_acts = (("wi_0", functools.partial(nn.gelu, approximate=True)), ("wi_1", lambda h: h))
    h = None
    for name, act in names_acts:
      hi = act(proj(cfg.mlp_dim, ("embed", "mlp"), name)(x, feature_ids))
      h = hi if h is None else h * hi
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return proj(cfg.emb_dim, ("mlp", "embed"), "wo")(h, feature_ids)


class EncoderLayer(nn.Module):
  """x `[b, in_len, emb]` -> `[b, in_len, emb]`; `(x, None)` when `scanned` (nn.scan's carry)."""

  config: T5Config
  flix: FlixConfig | None = None
  scanned: bool = False

  @nn.compact
  def __call__(self, x, feature_ids, mask, bias, deterministic: bool):
    cfg = self.config
    drop = lambda h: nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_attention_layer_norm")(x)
    x = x + drop(Attention(cfg, "encoder.attention", self.flix, name="attention")(
        h, h, feature_ids, mask, bias, deterministic=deterministic))
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(cfg, "encoder.mlp", self.flix, name="mlp")(
        h, feature_ids, deterministic=deterministic))
    x = constrain(x, "embed")
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  """y `[b, out_len, emb]` -> `[b, out_len, emb]`; `(y, None)` when `scanned`."""

  config: T5Config
  flix: FlixConfig | None = None
  scanned: bool = False

  @nn.compact
  def __call__(self, y, encoded, feature_ids, self_mask, self_bias, cross_mask,
               deterministic: bool, decode: bool):
    cfg = self.config
    drop = lambda h: nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_self_attention_layer_norm")(y)
    y = y + drop(Attention(cfg, "decoder.self_attention", self.flix, name="self_attention")(
        h, h, feature_ids, self_mask, self_bias, deterministic=deterministic, decode=decode))
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_cross_attention_layer_norm")(y)
    y = y + drop(Attention(cfg, "decoder.encoder_decoder_attention", self.flix,
                           name="encoder_decoder_attention")(
        h, encoded, feature_ids, cross_mask, None, deterministic=deterministic))
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm")(y)
    y = y + drop(MLP(cfg, "decoder.mlp", self.flix, name="mlp")(
        h, feature_ids, deterministic=deterministic))
    y = constrain(y, "embed")
    return (y, None) if self.scanned else y


class Encoder(nn.Module):
  config: T5Config
  embedder: nn.Module
  flix: FlixConfig | None = None
  remat_policy: str = "none"  # flix.models.remat
  scan_layers: bool = False  # flix.models.scan

  @nn.compact
  def __call__(self, tokens, feature_ids, segment_ids=None, *, deterministic: bool):
    cfg = self.config
    length = tokens.shape[1]
    mask = (tokens > 0)[:, None, None, :]
    if segment_ids is not None:
      mask = mask & same_segment(segment_ids, segment_ids)
    bias = RelativePositionBiases(cfg.relpos_buckets, cfg.relpos_max_distance, cfg.num_heads,
                                  bidirectional=True, name="relpos_bias")(
        np.arange(length), np.arange(length))
    x = constrain(self.embedder(tokens).astype(jnp.dtype(cfg.dtype)), "embed")
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    args = (feature_ids, mask, bias, deterministic)
    if self.scan_layers:
      stack = scan.scanned(EncoderLayer, cfg.num_encoder_layers, self.remat_policy,
                           static_argnums=(5,), broadcast=len(args))
      x, _ = stack(cfg, self.flix, scanned=True, name=scan.STACK)(x, *args)
    else:
      layer = remat.block(EncoderLayer, self.remat_policy, static_argnums=(5,))
      for i in range(cfg.num_encoder_layers):
        x = layer(cfg, self.flix, name=scan.layer_name(i))(x, *args)
    x = RMSNorm(cfg.layer_norm_epsilon, name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  embedder: nn.Module
  flix: FlixConfig | None = None
  remat_policy: str = "none"  # flix.models.remat
  scan_layers: bool = False  # flix.models.scan

  @nn.compact
  def __call__(self, encoded, encoder_tokens, decoder_input_tokens, feature_ids,
               encoder_segment_ids=None, decoder_segment_ids=None, *, deterministic: bool,
               decode: bool = False, max_decode_length: int | None = None):
    cfg = self.config
    packed = decoder_segment_ids is not None
    if packed != (encoder_segment_ids is not None):
      raise ValueError("packed rows need both encoder_segment_ids and decoder_segment_ids, got "
                       f"only {'decoder' if packed else 'encoder'}_segment_ids")
    if packed and decode:
      raise ValueError("decode=True takes unpacked rows, got decoder_segment_ids")
    relpos = RelativePositionBiases(cfg.relpos_buckets, cfg.relpos_max_distance, cfg.num_heads,
                                    bidirectional=False, name="relpos_bias")
    length = decoder_input_tokens.shape[1]
    if decode:
      # One position per call: bias of every position against the full cache; row picked by
      # the step index, which equals the cache index of every self-attention layer.
      total = max_decode_length or length
      is_initialized = self.has_variable("cache", "position")
      step = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      full = relpos(np.arange(total), np.arange(total))
      self_bias = jax.lax.dynamic_slice_in_dim(full, step.value, 1, axis=2)
      if is_initialized:
        step.value = step.value + 1
      self_mask = jnp.ones((1, 1, 1, 1), bool)  # Causality comes from the cache index.
    else:
      self_bias = relpos(np.arange(length), np.arange(length))
      self_mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    cross_mask = (encoder_tokens > 0)[:, None, None, :]
    if packed:
      self_mask = self_mask & same_segment(decoder_segment_ids, decoder_segment_ids)
      cross_mask = cross_mask & same_segment(decoder_segment_ids, encoder_segment_ids)
    y = constrain(self.embedder(decoder_input_tokens).astype(jnp.dtype(cfg.dtype)), "embed")
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    # The decode step (its cache is mutable state) is never rematerialised.
    policy = "none" if decode else self.remat_policy
    args = (encoded, feature_ids, self_mask, self_bias, cross_mask, deterministic, decode)
    if self.scan_layers:  # The cache, like the params, is stacked on the layer axis.
      stack = scan.scanned(DecoderLayer, cfg.num_decoder_layers, policy, static_argnums=(7, 8),
                           broadcast=len(args))
      y, _ = stack(cfg, self.flix, scanned=True, name=scan.STACK)(y, *args)
    else:
      layer = remat.block(DecoderLayer, policy, static_argnums=(7, 8))
      for i in range(cfg.num_decoder_layers):
        y = layer(cfg, self.flix, name=scan.layer_name(i))(y, *args)
    y = RMSNorm(cfg.layer_norm_epsilon, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:  # Original T5: tied embeddings, output rescaled by d**-0.5.
      logits = self.embedder.attend(y * cfg.emb_dim**-0.5)
    else:
      logits = projections(None, "", jnp.dtype(cfg.dtype))(
          cfg.vocab_size, ("embed", "vocab"), "logits_dense")(y)
    return constrain(logits.astype(jnp.float32), "vocab")


class T5(scan.UnscannedTree, nn.Module):
  """Encoder-decoder T5 with optional FLix adapters on the projections `flix.targets` names."""

  config: T5Config
  flix: FlixConfig | None = None
  remat_policy: str = "none"  # Of the layer blocks in training (flix.models.remat).
  # nn.scan over each stack's layers (flix.models.scan); the parameter tree stays unscanned.
  scan_layers: bool = False

  def setup(self):
    cfg = self.config
    self.token_embedder = nn.Embed(
        cfg.vocab_size, cfg.emb_dim, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("vocab", "embed")))
    self.encoder = Encoder(cfg, self.token_embedder, self.flix, self.remat_policy,
                           self.scan_layers)
    self.decoder = Decoder(cfg, self.token_embedder, self.flix, self.remat_policy,
                           self.scan_layers)

  def stacks(self) -> scan.Stacks:
    """Where the scanned stacks sit in the variable tree, and their layer counts."""
    cfg = self.config
    return ((("encoder",), cfg.num_encoder_layers), (("decoder",), cfg.num_decoder_layers))

  @staticmethod
  def projection_names(config: T5Config) -> tuple[str, ...]:
    """The projections adapters can target, "<block>.<projection>" (as PEFT's target_modules
    per architecture): attention query/key/value/out and the MLP's wi_0/wi_1/wo (wi for ReLU)."""
    mlp = ("wi",) if config.mlp_activations == ("relu",) else ("wi_0", "wi_1")
    attention = ("encoder.attention", "decoder.self_attention",
                 "decoder.encoder_decoder_attention")
    return tuple(f"{b}.{p}" for b in attention for p in ("query", "key", "value", "out")) + tuple(
        f"{b}.{p}" for b in ("encoder.mlp", "decoder.mlp") for p in (*mlp, "wo"))

  @property
  def n_types(self) -> int:
    """Feature types this model's adapters read (0: no feature ids needed)."""
    return self.flix.space.n_types if self.flix is not None else 0

  def encode(self, encoder_input_tokens, feature_ids=None, *, encoder_segment_ids=None,
             enable_dropout: bool = False):
    """`[b, in_len]` tokens -> encoded `[b, in_len, emb]`."""
    return self.encoder(encoder_input_tokens, feature_ids, encoder_segment_ids,
                        deterministic=not enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, feature_ids=None, *,
             encoder_segment_ids=None, decoder_segment_ids=None, enable_dropout: bool = False,
             decode: bool = False, max_decode_length: int | None = None):
    """Logits `[b, out_len, vocab]` (float32); with decode=True, one position per call."""
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens, feature_ids,
                        encoder_segment_ids, decoder_segment_ids,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, feature_ids=None, *,
               encoder_segment_ids=None, decoder_segment_ids=None,
               enable_dropout: bool = False):
    """Teacher-forced logits `[b, out_len, vocab]`; feature_ids int `[b, n_types]`.

    encoder_segment_ids `[b, in_len]`, decoder_segment_ids `[b, out_len]`: packed rows (both
    or neither), whose examples attend only within their own segment.
    """
    encoded = self.encode(encoder_input_tokens, feature_ids,
                          encoder_segment_ids=encoder_segment_ids, enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, feature_ids,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids, enable_dropout=enable_dropout)


def init_params(model: T5, rng: jax.Array, batch: int = 1, input_length: int = 8,
                target_length: int = 8) -> dict:
  """Boxed (logically partitioned) params of `model`; `nn.unbox` gives plain arrays.

  Runs op by op: XLA:CPU needs ~15 s to compile the whole T5 init (one threefry graph per
  parameter), op-by-op init reuses compiled ops and takes well under a second once warm.
  """
  n_types = model.flix.space.n_types if model.flix is not None else 0
  ids = jnp.zeros((batch, n_types), jnp.int32)
  enc = jnp.ones((batch, input_length), jnp.int32)
  dec = jnp.ones((batch, target_length), jnp.int32)
  return model.init(rng, enc, dec, ids)["params"]


def abstract_params(model: T5) -> dict:
  """Plain param shapes of `model` (jax.ShapeDtypeStruct leaves), traced without initialising."""
  return nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
