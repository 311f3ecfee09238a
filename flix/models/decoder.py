"""Decoder-only language models (Llama / Mistral / Qwen2 / Gemma style) with FLix adapters.

One stack of pre-norm blocks: RMSNorm (Gemma: scale 1 + w), rotary position embeddings on
queries and keys (HF's rotate-half layout; theta and linear / Llama-3 frequency scaling
configurable), grouped-query attention (num_kv_heads <= num_heads; 1 is multi-query), optional
q/k/v biases (Qwen2), an optional sliding window (Mistral), a gated MLP (SwiGLU: silu; GeGLU:
gelu), tied or untied output embedding, and Gemma's sqrt(d) input embedding scale. Every
projection is a `FlixDense`.

Parameter tree (T5X logical axis names in brackets):

    token_embedder/embedding                     [vocab, emb]    (vocab, embed)
    layers_{i}/pre_attention_layer_norm/scale    [emb]           (embed)
    layers_{i}/attention/query/kernel            [emb, H * D]    (embed, joined_kv)
    layers_{i}/attention/{key,value}/kernel      [emb, KV * D]   (embed, joined_kv)
    layers_{i}/attention/{query,key,value}/bias  [H * D | KV * D] (joined_kv), with qkv_bias
    layers_{i}/attention/out/kernel              [H * D, emb]    (joined_kv, embed)
    layers_{i}/pre_mlp_layer_norm/scale          [emb]
    layers_{i}/mlp/{wi_0,wi_1}/kernel            [emb, mlp]      (embed, mlp); wi_0 is gated
    layers_{i}/mlp/wo/kernel                     [mlp, emb]      (mlp, embed)
    decoder_norm/scale                           [emb]
    logits_dense/kernel                          [emb, vocab]    (embed, vocab), untied only

Adapters sit next to the kernel they adapt (.../attention/query/lora_a_task); adapter targets
are "attention.{query,key,value,out}" and "mlp.{wi_0,wi_1,wo}" (`DecoderLM.projection_names`).

Decoding (`decode=True`) keeps keys and values in the "cache" collection, `[rows, length, KV, D]`
per layer (KV heads only: the GQA saving), plus `index` (next buffer position) and `start`
(`[rows]`, each row's first buffer position). The first call writes a whole (left-padded)
prompt, later calls one position each; a row's positions count from its `start`, and buffer
positions before it are never attended to.

Packed rows (`flix.models.segments`, training and scoring only): with `segment_ids` a position
attends only within its own segment (causally; a prefix only to its own segment's prefix), and
rotary positions are the given per-segment `positions` (seqio's `decoder_positions`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.layers import FAN_IN_NORMAL, constrain, projections
from flix.models import remat, scan
from flix.models.segments import same_segment

MLP_ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and variant switches of a decoder-only LM.

  Attributes:
    vocab_size, emb_dim, mlp_dim, num_layers: sizes.
    num_heads, num_kv_heads, head_dim: query heads, key/value heads (GQA; num_heads must be a
      multiple; 1 = multi-query) and per-head size (need not be emb_dim / num_heads).
    mlp_activation: the gate's activation: "silu" (SwiGLU: Llama, Mistral, Qwen2), "gelu_tanh"
      (GeGLU with the tanh approximation: Gemma) or "gelu" (exact).
    rope_theta: rotary base. rope_type "default", "linear" (frequencies / rope_factor) or
      "llama3" (Llama 3.1's band-wise scaling with rope_factor, rope_low_freq_factor,
      rope_high_freq_factor, rope_original_max_positions).
    norm_epsilon: RMSNorm epsilon. norm_scale_plus_one: Gemma's RMSNorm, x * (1 + w).
    qkv_bias: biases on the query/key/value projections (Qwen2).
    logits_via_embedding: tied output embedding (logits = h E^T); else `logits_dense`.
    scale_embeddings: input embeddings times sqrt(emb_dim) (Gemma).
    sliding_window: a query sees only the last `sliding_window` positions (Mistral); None: all.
    dropout_rate: on attention weights and residual branches, in training only.
    dtype: activation (compute) dtype; parameters are always float32.
  """

  vocab_size: int = 384
  emb_dim: int = 256
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 64
  mlp_dim: int = 1024
  num_layers: int = 4
  mlp_activation: str = "silu"
  rope_theta: float = 10000.0
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  norm_epsilon: float = 1e-6
  norm_scale_plus_one: bool = False
  qkv_bias: bool = False
  logits_via_embedding: bool = False
  scale_embeddings: bool = False
  sliding_window: int | None = None
  dropout_rate: float = 0.0
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                 "num_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"DecoderConfig.{name} must be an int >= 1, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig.num_heads {self.num_heads} is not a multiple of "
                       f"num_kv_heads {self.num_kv_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig.head_dim must be even for rotary embeddings, got "
                       f"{self.head_dim}")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"unsupported mlp_activation {self.mlp_activation!r}; expected one of "
                       f"{MLP_ACTIVATIONS}")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"unsupported rope_type {self.rope_type!r}; expected one of {ROPE_TYPES}")
    if self.rope_type == "default" and self.rope_factor != 1.0:
      raise ValueError(f"rope_factor {self.rope_factor} needs rope_type 'linear' or 'llama3'")
    if not self.rope_theta > 0 or not self.rope_factor > 0:
      raise ValueError(f"rope_theta and rope_factor must be > 0, got {self.rope_theta}, "
                       f"{self.rope_factor}")
    if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                            or self.sliding_window < 1):
      raise ValueError(f"sliding_window must be an int >= 1 or None, got {self.sliding_window!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    jnp.dtype(self.dtype)  # Raises for an unknown dtype name.

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> "DecoderConfig":
    return cls(**json.loads(text))


# -- rotary embeddings ----------------------------------------------------------------------------
def rope_frequencies(config: DecoderConfig) -> np.ndarray:
  """Inverse frequencies float32 `[head_dim / 2]`, as transformers computes them (float32)."""
  f32, dim = np.float32, config.head_dim
  inv = (f32(1.0) / (f32(config.rope_theta) ** (np.arange(0, dim, 2).astype(f32) / f32(dim))))
  if config.rope_type == "linear":
    inv = inv / f32(config.rope_factor)
  elif config.rope_type == "llama3":
    factor, old = f32(config.rope_factor), f32(config.rope_original_max_positions)
    low, high = f32(config.rope_low_freq_factor), f32(config.rope_high_freq_factor)
    wavelen = f32(2 * math.pi) / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(f32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates x `[b, n, heads, D]` by positions int `[b, n]` (rotate-half layout, as HF)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [b, n, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


# -- masks ----------------------------------------------------------------------------------------
def attention_mask(q_pos: jax.Array, k_pos: jax.Array, start: jax.Array | None,
                   window: int | None, prefix_q: jax.Array | None = None,
                   prefix_k: jax.Array | None = None,
                   segments: jax.Array | None = None) -> jax.Array:
  """bool `[b or 1, 1, 1, q, k]`: causal over buffer positions q_pos `[q]`, k_pos `[k]`.

  start `[b]`: keys before a row's start are padding (never visible). window: keys at most
  window - 1 positions back. prefix_q `[b, q]` / prefix_k `[b, k]`: a fully visible prefix
  (T5X's bidirectional inputs): a prefix query sees every prefix key. segments `[b, q]` (q = k,
  packed rows): a query sees only keys of its own segment.
  """
  mask = k_pos[None, :] <= q_pos[:, None]
  if window is not None:
    mask &= k_pos[None, :] > q_pos[:, None] - window
  mask = mask[None]
  if prefix_q is not None:
    mask = mask | (prefix_q[:, :, None] & prefix_k[:, None, :])
  if start is not None:
    mask = mask & (k_pos[None, None, :] >= start[:, None, None])
  if segments is not None:
    mask = mask & same_segment(segments, segments)[:, 0]
  return mask[:, None, None]


class RMSNorm(nn.Module):
  """x / rms(x) * scale in float32 (scale = 1 + w for Gemma), cast back to x's dtype."""

  epsilon: float = 1e-6
  plus_one: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary embeddings and an optional KV cache."""

  config: DecoderConfig
  flix: FlixConfig | None = None

  @nn.compact
  def __call__(self, x, feature_ids, positions, mask_fn, cache_index=None, *,
               deterministic: bool):
    """x `[b, n, emb]`, positions int `[b, n]`; mask_fn(keys) gives the bool mask
    `[b, 1, 1, n, keys]`. cache_index: decode at this buffer position (None: no cache)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, n = x.shape[:2]
    proj = projections(self.flix, "attention", dtype, FAN_IN_NORMAL)
    qkv = lambda name, heads: proj(heads * cfg.head_dim, ("embed", "joined_kv"), name,
                                   use_bias=cfg.qkv_bias)(x, feature_ids).reshape(
                                       b, n, heads, cfg.head_dim)
    inv_freq = rope_frequencies(cfg)
    q = apply_rope(qkv("query", cfg.num_heads), positions, inv_freq)
    k = apply_rope(qkv("key", cfg.num_kv_heads), positions, inv_freq)
    v = qkv("value", cfg.num_kv_heads)
    if cache_index is not None:
      k, v = self._update_cache(k, v, cache_index)
    mask = mask_fn(k.shape[1])
    q = q.reshape(b, n, cfg.num_kv_heads, cfg.num_groups, cfg.head_dim)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k).astype(jnp.float32) * cfg.head_dim**-0.5
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits).astype(dtype)
    weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, v).reshape(b, n, -1)
    return proj(cfg.emb_dim, ("joined_kv", "embed"), "out")(out, feature_ids)

  def _update_cache(self, k, v, index):
    """Writes this call's n keys/values at buffer position `index`; returns the whole cache
    (the init pass only creates it, at this call's length)."""
    is_initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not is_initialized:
      return k, v
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, index, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, index, 0, 0))
    return cached_k.value, cached_v.value


class MLP(nn.Module):
  """Gated MLP: wo(act(wi_0 x) * wi_1 x)."""

  config: DecoderConfig
  flix: FlixConfig | None = None

  @nn.compact
  def __call__(self, x, feature_ids, *, deterministic: bool):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    proj = projections(self.flix, "mlp", dtype)
    act = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
           "gelu": functools.partial(jax.nn.gelu, approximate=False)}[cfg.mlp_activation]
    gate = proj(cfg.mlp_dim, ("embed", "mlp"), "wi_0")(x, feature_ids)
    up = proj(cfg.mlp_dim, ("embed", "mlp"), "wi_1")(x, feature_ids)
    h = nn.Dropout(cfg.dropout_rate)(act(gate) * up, deterministic=deterministic)
    return proj(cfg.emb_dim, ("mlp", "embed"), "wo")(h, feature_ids)


class DecoderBlock(nn.Module):
  """x `[b, n, emb]` -> `[b, n, emb]`; `(x, None)` when `scanned` (nn.scan's carry)."""

  config: DecoderConfig
  flix: FlixConfig | None = None
  scanned: bool = False

  @nn.compact
  def __call__(self, x, feature_ids, positions, mask_fn, cache_index=None,
               deterministic: bool = True):
    cfg = self.config
    drop = lambda h: nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    norm = functools.partial(RMSNorm, cfg.norm_epsilon, cfg.norm_scale_plus_one)
    h = norm(name="pre_attention_layer_norm")(x)
    x = x + drop(Attention(cfg, self.flix, name="attention")(
        h, feature_ids, positions, mask_fn, cache_index, deterministic=deterministic))
    h = norm(name="pre_mlp_layer_norm")(x)
    x = x + drop(MLP(cfg, self.flix, name="mlp")(h, feature_ids, deterministic=deterministic))
    x = constrain(x, "embed")
    return (x, None) if self.scanned else x


class DecoderLM(scan.UnscannedTree, nn.Module):
  """Decoder-only LM with optional FLix adapters on the projections `flix.targets` names."""

  config: DecoderConfig
  flix: FlixConfig | None = None
  remat_policy: str = "none"  # Of the layer blocks in training (flix.models.remat).
  # nn.scan over the layers (flix.models.scan); the parameter tree stays unscanned.
  scan_layers: bool = False

  @staticmethod
  def projection_names(config: DecoderConfig) -> tuple[str, ...]:
    """The projections adapters can target: "attention.{query,key,value,out}" and
    "mlp.{wi_0,wi_1,wo}" (HF: q/k/v/o_proj, gate_proj, up_proj, down_proj)."""
    del config  # Every variant has the same seven projections.
    return tuple(f"attention.{p}" for p in ("query", "key", "value", "out")) + tuple(
        f"mlp.{p}" for p in ("wi_0", "wi_1", "wo"))

  @property
  def n_types(self) -> int:
    """Feature types this model's adapters read (0: no feature ids needed)."""
    return self.flix.space.n_types if self.flix is not None else 0

  def stacks(self) -> scan.Stacks:
    """Where the scanned stack sits in the variable tree (the root), and its layer count."""
    return (((), self.config.num_layers),)

  @nn.compact
  def __call__(self, tokens, feature_ids=None, *, prefix=None, start=None, segment_ids=None,
               positions=None, enable_dropout: bool = False, decode: bool = False):
    """Logits `[b, n, vocab]` (float32) of tokens int `[b, n]`; feature_ids int `[b, n_types]`.

    prefix: bool `[b, n]` or None: positions of a fully visible prefix (bidirectional inputs,
      T5X's prefix LM); None is fully causal (the HF models). With decode, first call only.
    segment_ids, positions: int `[b, n]`, packed rows (both or neither; not with decode): each
      segment attends within itself, at its own rotary positions.
    decode: run on the cache (see the module docstring). The first call (creating the cache,
      or prefill) takes `start` int `[b]`: each row's first real buffer position (the rows
      left-padded); default 0. Later calls take one position.
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, n = tokens.shape
    std = cfg.emb_dim**-0.5 if cfg.logits_via_embedding or cfg.scale_embeddings else 1.0
    embedder = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype, param_dtype=jnp.float32,
                        embedding_init=nn.with_logical_partitioning(
                            nn.initializers.normal(std), ("vocab", "embed")),
                        name="token_embedder")
    if segment_ids is not None or positions is not None:
      positions, mask_fn, cache_index = self._packed_positions_and_mask(segment_ids, positions,
                                                                        prefix, decode)
    else:
      positions, mask_fn, cache_index = self._positions_and_mask(b, n, prefix, start, decode)
    x = constrain(embedder(tokens).astype(dtype), "embed")
    if cfg.scale_embeddings:
      x = x * jnp.asarray(cfg.emb_dim**0.5, dtype)
    deterministic = not enable_dropout
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    # The decode step (its cache is mutable state) is never rematerialised.
    policy = "none" if decode else self.remat_policy
    args = (feature_ids, positions, mask_fn, cache_index, deterministic)
    if self.scan_layers:  # The cache, like the params, is stacked on the layer axis.
      stack = scan.scanned(DecoderBlock, cfg.num_layers, policy, static_argnums=(4, 6),
                           broadcast=len(args))
      x, _ = stack(cfg, self.flix, scanned=True, name=scan.STACK)(x, *args)
    else:
      block = remat.block(DecoderBlock, policy, static_argnums=(4, 6))
      for i in range(cfg.num_layers):
        x = block(cfg, self.flix, name=scan.layer_name(i))(x, *args)
    x = RMSNorm(cfg.norm_epsilon, cfg.norm_scale_plus_one, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = embedder.attend(x)
    else:
      logits = projections(None, "", dtype)(cfg.vocab_size, ("embed", "vocab"), "logits_dense")(x)
    return constrain(logits.astype(jnp.float32), "vocab")

  def _packed_positions_and_mask(self, segment_ids, positions, prefix, decode: bool):
    """(positions, mask_fn, None) of packed rows: causal (and prefix) within each segment."""
    if segment_ids is None or positions is None or decode:
      raise ValueError("packed rows need both segment_ids and positions, and no decode=True; got "
                       f"segment_ids {'None' if segment_ids is None else 'set'}, positions "
                       f"{'None' if positions is None else 'set'}, decode={decode}")
    n, window = segment_ids.shape[1], self.config.sliding_window
    mask_fn = lambda keys: attention_mask(jnp.arange(n), jnp.arange(keys), None, window, prefix,
                                          prefix, segment_ids)
    return positions, mask_fn, None

  def _positions_and_mask(self, b: int, n: int, prefix, start, decode: bool):
    """(positions int `[b, n]`, mask_fn(keys) -> bool `[b, 1, 1, n, keys]`, cache index or
    None). With decode, advances the cache index by n."""
    window = self.config.sliding_window
    if not decode:
      q_pos = jnp.arange(n)
      mask_fn = lambda keys: attention_mask(q_pos, jnp.arange(keys), None, window, prefix,
                                            prefix)
      return jnp.broadcast_to(q_pos, (b, n)), mask_fn, None
    is_initialized = self.has_variable("cache", "index")
    index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    first = self.variable("cache", "start", lambda: jnp.zeros((b,), jnp.int32))
    i = index.value
    if start is not None:
      first.value = jnp.asarray(start, jnp.int32)
    if is_initialized:
      index.value = i + n
    buffer = i + jnp.arange(n)
    row_start = first.value
    positions = jnp.maximum(buffer[None, :] - row_start[:, None], 0)

    def mask_fn(keys):
      prefix_k = prefix
      if prefix is not None and keys > n:  # The first call's prompt: buffer positions 0..n-1.
        prefix_k = jnp.zeros((b, keys), bool).at[:, :n].set(prefix)
      return attention_mask(buffer, jnp.arange(keys), row_start, window, prefix, prefix_k)

    return positions, mask_fn, i


def init_params(model: DecoderLM, rng: jax.Array, batch: int = 1, length: int = 8) -> dict:
  """Boxed (logically partitioned) params of `model`; `nn.unbox` gives plain arrays."""
  n_types = model.flix.space.n_types if model.flix is not None else 0
  return model.init(rng, jnp.ones((batch, length), jnp.int32),
                    jnp.zeros((batch, n_types), jnp.int32))["params"]


def abstract_params(model: DecoderLM) -> dict:
  """Plain param shapes of `model` (jax.ShapeDtypeStruct leaves), traced without initialising."""
  return nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
