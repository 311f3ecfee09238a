"""Token cross-entropy with z-loss and T5X-style loss normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                  z_loss: float = 1e-4,
                  normalizer: float | str | None = NUM_REAL_TARGET_TOKENS
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted token loss of logits `[b, L, V]` (float32) against targets `[b, L]`.

  z_loss adds z_loss * log(Z)^2 per token (T5X). `normalizer`: "NUM_REAL_TARGET_TOKENS" divides
  by the summed weights, a number divides by that constant, None gives the plain sum.
  Returns (loss, metrics: cross_entropy, z_loss, accuracy, num_tokens).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce = (log_z - target_logit) * weights
  zl = z_loss * jnp.square(log_z) * weights
  num_tokens = jnp.sum(weights)
  if normalizer == NUM_REAL_TARGET_TOKENS:
    denom = jnp.maximum(num_tokens, 1.0)
  elif normalizer is None:
    denom = 1.0
  elif isinstance(normalizer, (int, float)):
    denom = float(normalizer)
  else:
    raise ValueError(f"unknown loss normalizer {normalizer!r}; expected "
                     f"{NUM_REAL_TARGET_TOKENS!r}, a number or None")
  correct = (jnp.argmax(logits, axis=-1) == targets) * weights
  metrics = {"cross_entropy": jnp.sum(ce) / jnp.maximum(num_tokens, 1.0),
             "z_loss": jnp.sum(zl) / jnp.maximum(num_tokens, 1.0),
             "accuracy": jnp.sum(correct) / jnp.maximum(num_tokens, 1.0),
             "num_tokens": num_tokens}
  return (jnp.sum(ce) + jnp.sum(zl)) / denom, metrics
