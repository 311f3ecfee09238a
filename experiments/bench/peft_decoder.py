"""`python -m experiments.bench peft --arch decoder`: the PEFT bench of `experiments.bench.peft` on a
decoder-only Llama (same timing, equivalence checks and report; this module holds what differs).

Model (`--model tiny`): `flix.models.decoder.DecoderLM` in Llama form: byte vocabulary 384,
d_model 256, 4 layers, 4 query heads sharing 2 key/value heads (GQA), head_dim 64, SwiGLU
d_ff 1024, RMSNorm, RoPE (theta 1e4), untied head; `--model small`: d_model 512, 6 layers, 8 / 4
heads, d_ff 1536; the size flags and `--num-kv-heads` override. Random float32 weights, written
by `flix.interop.hf.save_hf` as LlamaForCausalLM and read back by
`AutoModelForCausalLM.from_pretrained`. No dropout anywhere (LlamaConfig's attention_dropout 0,
and Llama has no other dropout), so training is deterministic on both sides. PEFT
target_modules q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (task CAUSAL_LM) =
flix targets ("*",).

Batch: the prefix-LM batch `FlixPrefixLMFeatureConverter` builds (loss on targets only) for B
sequences s of in_len prompt + out_len target random bytes (no padding): decoder inputs
`[B, L]` = [0, s[:-1]] (start token 0), targets s, loss weights 1 on the last out_len positions
and 0 on the prompt, L = in_len + out_len; fully causal attention, no attention mask on either
side. The loss both sides train, and whose gradients the checks compare, is the mean
cross-entropy over the B x out_len target tokens; torch computes it from the logits at those
positions (not through `labels=`, whose internal shift would drop the start token and move
every position). flix's trainer step adds its z-loss (1e-4), as in the T5 bench.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench.synthetic import random_tokens, shift_right
from flix.interop.hf_decoder import architecture_of
from flix.models.decoder import DecoderConfig, DecoderLM
from flix.models.model import DecoderOnlyModel

MODELS = {"tiny": dict(vocab_size=384, emb_dim=256, num_heads=4, num_kv_heads=2, head_dim=64,
                       mlp_dim=1024, num_layers=4),
          "small": dict(vocab_size=384, emb_dim=512, num_heads=8, num_kv_heads=4, head_dim=64,
                        mlp_dim=1536, num_layers=6)}
OVERRIDES = {"emb_dim": "emb_dim", "mlp_dim": "mlp_dim", "num_heads": "num_heads",
             "num_kv_heads": "num_kv_heads", "head_dim": "head_dim", "layers": "num_layers"}


class DecoderArch:
  """What `experiments.bench.peft` needs of the decoder-only family (see the module docstring)."""

  name = "decoder"
  bar_train = 1.5  # Issue 15: flix LoRA training tokens/s >= 1.5x PEFT LoRA's.
  network = DecoderLM
  model_object = DecoderOnlyModel
  targets = ("every projection (PEFT target_modules q_proj, k_proj, v_proj, o_proj, gate_proj, "
             "up_proj, down_proj)")
  train = ("forward + backward + optimizer step, no dropout (Llama has none), base frozen; "
           "loss: mean cross-entropy of the target tokens")
  infer = "logits of the whole prefix-LM sequence (one causal forward, no KV cache)"

  @staticmethod
  def config(args: argparse.Namespace) -> DecoderConfig:
    """`--model`'s sizes with the size flags' overrides (ValueError for an invalid shape)."""
    sizes = dict(MODELS[args.model])
    for flag, field in OVERRIDES.items():
      if getattr(args, flag, None) is not None:
        sizes[field] = getattr(args, flag)
    return DecoderConfig(**sizes)

  @staticmethod
  def hf_class(transformers):
    return transformers.AutoModelForCausalLM

  @staticmethod
  def tokens(rng: np.random.Generator, cfg: DecoderConfig, args: argparse.Namespace) -> dict:
    """{"dec": inputs int32 `[B, L]`, "targets": int32 `[B, L]`, "weights": float32 `[B, L]`,
    "causal": the prefix-LM converter's decoder_causal_attention int32 `[B, L]`}."""
    length = args.in_len + args.out_len
    seq = random_tokens(rng, cfg.vocab_size, (args.batch, length))
    weights = np.zeros((args.batch, length), np.float32)
    weights[:, args.in_len:] = 1.0
    causal = (np.arange(length) <= args.in_len).astype(np.int32)  # The prompt and one more.
    return {"dec": shift_right(seq), "targets": seq, "weights": weights,
            "causal": np.broadcast_to(causal, (args.batch, length)).copy()}

  @staticmethod
  def flix_inputs(tokens: dict) -> tuple:
    """`DecoderLM.apply`'s inputs before the feature ids."""
    return (jnp.asarray(tokens["dec"]),)

  @staticmethod
  def flix_loss(logits: jax.Array, tokens: dict) -> jax.Array:
    """Mean cross-entropy over the weighted (target) positions."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens["targets"])
    return jnp.sum(ce * tokens["weights"]) / jnp.sum(tokens["weights"])

  @staticmethod
  def trainer_batch(tokens: dict, ids: np.ndarray) -> dict[str, jax.Array]:
    """`DecoderOnlyModel`'s batch dict (the prefix-LM converter's features)."""
    return {"decoder_input_tokens": jnp.asarray(tokens["dec"]),
            "decoder_target_tokens": jnp.asarray(tokens["targets"]),
            "decoder_loss_weights": jnp.asarray(tokens["weights"]),
            "decoder_causal_attention": jnp.asarray(tokens["causal"]),
            "feature_ids": jnp.asarray(ids, jnp.int32)}

  @staticmethod
  def torch_batch(torch, tokens: dict) -> dict:
    """{"inputs": forward kwargs, "targets": long `[B, out_len]`, "start": in_len}."""
    start = int(np.argmax(tokens["weights"][0] > 0))
    if not (tokens["weights"][:, start:] == 1).all() or tokens["weights"][:, :start].any():
      raise ValueError("torch_batch needs loss weights 0 on a prompt, then 1 to the end")
    return {"inputs": {"input_ids": torch.as_tensor(tokens["dec"], dtype=torch.long)},
            "targets": torch.as_tensor(tokens["targets"][:, start:], dtype=torch.long),
            "start": start}

  @staticmethod
  def torch_loss(torch, model, batch: dict):
    """(mean cross-entropy of the target tokens, logits `[B, L, V]`) of a causal LM."""
    logits = model(**batch["inputs"], use_cache=False).logits
    target_logits = logits[:, batch["start"]:]
    loss = torch.nn.functional.cross_entropy(target_logits.reshape(-1, logits.shape[-1]),
                                             batch["targets"].reshape(-1))
    return loss, logits

  @staticmethod
  def describe(cfg: DecoderConfig) -> dict:
    return {"decoder": dataclasses.asdict(cfg), "hf_architecture": architecture_of(cfg)}
