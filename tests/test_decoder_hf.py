"""DecoderLM against transformers' own implementations: tiny random models built in-process
(no downloads), weights copied by name, float32 logits within 1e-4."""

import jax.numpy as jnp
import numpy as np
import pytest

import torch
import transformers

from flix.models.decoder import DecoderConfig, DecoderLM

ATOL = 1e-4
VOCAB = 64
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
             max_position_embeddings=64)


def build_hf_model(cls_name: str, config_name: str, seed: int = 0, **overrides):
  """A random transformers model with non-trivial norms, biases and head (eager attention)."""
  torch.manual_seed(seed)
  config = getattr(transformers, config_name)(**SIZES, **overrides)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = getattr(transformers, cls_name)(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.5 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (1.0 if "embed" in name else p.shape[-1]**-0.5))
  return model.eval()


def flix_params(model, tied: bool) -> dict:
  """The DecoderLM params of a Llama / Qwen2 state dict (kernels transposed to [in, out])."""
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  out = {"token_embedder": {"embedding": sd["model.embed_tokens.weight"]},
         "decoder_norm": {"scale": sd["model.norm.weight"]}}
  if not tied:
    out["logits_dense"] = {"kernel": sd["lm_head.weight"].T}
  names = {"attention": {"query": "self_attn.q_proj", "key": "self_attn.k_proj",
                         "value": "self_attn.v_proj", "out": "self_attn.o_proj"},
           "mlp": {"wi_0": "mlp.gate_proj", "wi_1": "mlp.up_proj", "wo": "mlp.down_proj"}}
  for i in range(model.config.num_hidden_layers):
    hf = f"model.layers.{i}."
    layer = {"pre_attention_layer_norm": {"scale": sd[hf + "input_layernorm.weight"]},
             "pre_mlp_layer_norm": {"scale": sd[hf + "post_attention_layernorm.weight"]}}
    for block, projections in names.items():
      layer[block] = {}
      for ours, theirs in projections.items():
        layer[block][ours] = {"kernel": sd[hf + theirs + ".weight"].T}
        if hf + theirs + ".bias" in sd:
          layer[block][ours]["bias"] = sd[hf + theirs + ".bias"]
    out[f"layers_{i}"] = layer
  return out


@pytest.mark.parametrize("arch", ["llama", "qwen2_tied"])
def test_logits_match_transformers(arch):
  """Llama (untied head, no biases) and Qwen2 (q/k/v biases, tied embeddings), GQA with 2
  key/value heads, rope_theta != 10000: logits within 1e-4 at every position."""
  theta = 5000.0
  if arch == "llama":
    hf_model = build_hf_model("LlamaForCausalLM", "LlamaConfig", rope_theta=theta,
                              tie_word_embeddings=False)
  else:
    hf_model = build_hf_model("Qwen2ForCausalLM", "Qwen2Config", rope_theta=theta,
                              tie_word_embeddings=True, use_sliding_window=False)
  tied = arch != "llama"
  config = DecoderConfig(vocab_size=VOCAB, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                         mlp_dim=48, num_layers=2, rope_theta=theta, norm_epsilon=1e-6,
                         qkv_bias=arch != "llama", logits_via_embedding=tied)
  tokens = np.random.RandomState(0).randint(0, VOCAB, (3, 12))
  with torch.no_grad():
    expected = hf_model(torch.as_tensor(tokens)).logits.numpy()
  got = DecoderLM(config).apply({"params": flix_params(hf_model, tied)},
                                jnp.asarray(tokens, jnp.int32))
  assert expected.std() > 1.0  # Non-trivial logits: a mismatch would show.
  np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=0)
