"""DecoderLM against transformers' own implementations: tiny random models built in-process
(no downloads), weights copied by name, float32 logits within 1e-4; and the conversion CLI
(from-hf, to-hf, export-peft, verify) for Llama, Mistral, Qwen2 and Gemma."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft
import torch
import transformers

from flix.checkpoints import adapter_leaves
from flix.models.decoder import DecoderConfig, DecoderLM
import tiny

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


# -- conversion (python -m flix.convert from-hf / to-hf / export-peft / verify) -------------------
# Llama: untied, GQA, llama3 rope scaling (original length 16: both scaled and smoothed bands);
# Mistral: a sliding window shorter than the batch; Qwen2: q/k/v biases, tied; Gemma: 1 + w
# norms, sqrt(d) embedding scale, GeGLU (tanh), tied.
ARCHS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=5000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16))),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(tie_word_embeddings=False,
                                                            sliding_window=5)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True,
                                                      use_sliding_window=False)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(tie_word_embeddings=True,
                                                      hidden_act="gelu_pytorch_tanh")),
}
FEATURES = "task=ordinal,lang=fr"


def convert_cli(*argv) -> int:
  from flix import convert
  return convert.main(list(argv))


def verify_cli(capsys, *argv) -> tuple[int, dict]:
  """(exit status, the JSON line) of `flix.convert verify ARGV`."""
  capsys.readouterr()
  code = convert_cli("verify", *argv)
  return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def load_hf_model(architecture: str, path: str):
  return getattr(transformers, architecture).from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager").eval()


def hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


TOKENS = np.random.RandomState(1).randint(0, VOCAB, (3, 12))


@pytest.fixture(scope="module", params=sorted(ARCHS))
def converted(request, tmp_path_factory):
  """A random transformers model saved to HF_DIR and converted with `from-hf` to CKPT."""
  architecture, config_name, overrides = ARCHS[request.param]
  root = tmp_path_factory.mktemp(f"hf_{request.param}")
  model = build_hf_model(architecture, config_name, seed=1, **overrides)
  hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
  model.save_pretrained(hf_dir)
  assert convert_cli("from-hf", "--hf_dir", hf_dir, "--out", ckpt) == 0
  return dict(arch=request.param, architecture=architecture, model=model, hf_dir=hf_dir,
              ckpt=ckpt, root=root)


def test_from_hf_then_verify(converted, capsys):
  """from-hf writes the variant's DecoderConfig and model gin; verify (on the checkpoint and in
  memory) finds logits within 1e-4 and greedy tokens equal to generate()."""
  from flix.checkpoints import load_model
  from flix.interop import hf_verify

  c = converted
  config, flix, _ = load_model(c["ckpt"])
  assert flix is None and isinstance(config, DecoderConfig)
  assert config.num_kv_heads == 2 and config.num_heads == 4
  assert config.logits_via_embedding == (c["arch"] in ("qwen2", "gemma"))
  assert config.qkv_bias == (c["arch"] == "qwen2")
  assert config.norm_scale_plus_one == config.scale_embeddings == (c["arch"] == "gemma")
  assert config.sliding_window == (5 if c["arch"] == "mistral" else None)
  assert config.rope_type == ("llama3" if c["arch"] == "llama" else "default")
  gin_text = open(os.path.join(c["ckpt"], "model.gin")).read()
  assert "MODEL_CONFIG = @DecoderConfig()" in gin_text
  assert f"DecoderConfig.num_kv_heads = 2\n" in gin_text

  out = str(c["root"] / "verify.json")
  code, report = verify_cli(capsys, "--hf_dir", c["hf_dir"], "--checkpoint", c["ckpt"],
                            "--json", out)
  assert code == 0, report
  assert report["architecture"] == c["architecture"]
  assert report["max_abs_logit_diff"] <= ATOL and report["greedy_equal"], report
  assert json.loads(open(out).read()) == report
  print(f"{c['architecture']}: max |logit diff| {report['max_abs_logit_diff']:.3g}")
  assert hf_verify.verify(c["hf_dir"]) == report  # In memory: the same params, bit for bit.


def test_to_hf_round_trip(converted):
  """to-hf writes the same architecture; transformers reloads it with the original's logits,
  and from-hf of it gives the checkpoint's params bit for bit."""
  from flix.checkpoints import load_model
  from flix.interop import hf

  c = converted
  out = str(c["root"] / "back")
  assert convert_cli("to-hf", "--checkpoint", c["ckpt"], "--out", out) == 0
  assert json.load(open(os.path.join(out, "config.json")))["architectures"] == [c["architecture"]]
  reloaded = load_hf_model(c["architecture"], out)
  np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(c["model"], TOKENS))
  config, _, params = load_model(c["ckpt"])
  config2, params2 = hf.load_hf(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_peft_equals_flix_adapter_path(converted):
  """A FLix checkpoint on the converted base with non-zero adapters: its PEFT export, loaded
  with peft onto the transformers model, gives flix's adapter-path logits for the combination;
  to-hf --features (merged) gives them too."""
  from flix.checkpoints import graft, load_model, save_model
  from flix.features import parse_features

  c = converted
  config, _, base = load_model(c["ckpt"])
  flix = tiny.flix(shared_rank=2, alpha=6.0)
  lm = DecoderLM(config, flix)
  params = graft(base, adapter_leaves(tiny.decoder_random_params(lm, seed=5, adapter_scale=0.1)))
  ckpt = save_model(str(c["root"] / "flix_ckpt"), params, config, flix)
  peft_dir, merged_dir = str(c["root"] / "peft"), str(c["root"] / "merged")
  assert convert_cli("export-peft", "--checkpoint", ckpt, "--features", FEATURES,
                     "--out", peft_dir) == 0
  assert convert_cli("to-hf", "--checkpoint", ckpt, "--features", FEATURES,
                     "--out", merged_dir) == 0
  adapter_config = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
  assert adapter_config["task_type"] == "CAUSAL_LM"
  assert adapter_config["target_modules"] == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  assert adapter_config["r"] == 4 + 2 + 2

  ids = flix.space.encode(parse_features(FEATURES), partial=True)
  expected = np.asarray(tiny.lm_apply(lm, params, jnp.asarray(TOKENS, jnp.int32),
                                      jnp.asarray(np.tile(ids, (len(TOKENS), 1)))))
  assert np.abs(expected - hf_logits(c["model"], TOKENS)).max() > 0.1  # The adapters matter.
  peft_model = peft.PeftModel.from_pretrained(load_hf_model(c["architecture"], c["hf_dir"]),
                                              peft_dir).eval()
  for model in (peft_model, load_hf_model(c["architecture"], merged_dir)):
    diff = np.abs(hf_logits(model, TOKENS) - expected).max()
    assert diff <= ATOL, diff


@pytest.mark.parametrize("converted", ["qwen2"], indirect=True)
def test_to_hf_qwen2_with_a_sliding_window(converted, tmp_path):
  """A DecoderConfig with q/k/v biases and a sliding window becomes a Qwen2 whose every layer
  slides (use_sliding_window, max_window_layers 0); transformers computes flix's logits."""
  import dataclasses

  from flix.checkpoints import load_model
  from flix.interop import hf

  config, _, params = load_model(converted["ckpt"])
  config = dataclasses.replace(config, sliding_window=5)
  out = hf.save_hf(str(tmp_path / "qwen2_window"), params, config)
  hf_config = json.load(open(os.path.join(out, "config.json")))
  assert hf_config["layer_types"] == ["sliding_attention"] * config.num_layers
  assert hf.load_hf(out)[0] == config
  ours = np.asarray(DecoderLM(config).apply({"params": params}, jnp.asarray(TOKENS, jnp.int32)))
  diff = np.abs(hf_logits(load_hf_model("Qwen2ForCausalLM", out), TOKENS) - ours).max()
  assert diff <= ATOL, diff
  full = np.asarray(DecoderLM(dataclasses.replace(config, sliding_window=None)).apply(
      {"params": params}, jnp.asarray(TOKENS, jnp.int32)))
  assert np.abs(full - ours).max() > 0.1  # The window matters at 12 positions.


@pytest.mark.parametrize("converted", ["llama"], indirect=True)
def test_verify_fails_on_a_perturbed_weight(converted, capsys):
  """verify exits 1 when the transformers weights differ from the checkpoint's."""
  from safetensors.numpy import save_file

  from flix.interop import hf_files

  c = converted
  bad = c["root"] / "perturbed"
  shutil.copytree(c["hf_dir"], bad)
  state = hf_files.read_hf_weights(str(bad))
  state["model.layers.1.mlp.down_proj.weight"][3, 5] += 0.05
  save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
  code, report = verify_cli(capsys, "--hf_dir", str(bad), "--checkpoint", c["ckpt"])
  assert code == 1 and report["max_abs_logit_diff"] > ATOL, report


def test_unsupported_decoder_configs_are_named():
  from flix.interop import hf
  from flix.interop.hf_decoder import config_from_hf
  from flix.errors import HFConversionError

  base = build_hf_model("LlamaForCausalLM", "LlamaConfig").config.to_dict()
  cases = [
      ({"architectures": ["GPT2LMHeadModel"]}, "architecture 'GPT2LMHeadModel' is not supported"),
      ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
       r"rope_type 'yarn' is not supported; expected one of \['default', 'linear', 'llama3'\]"),
      ({"attention_bias": True}, "attention_bias True is not supported"),
      ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4,
        "layer_types": ["full_attention", "sliding_attention"]},
       "layer_types .* DecoderLM needs the same attention on every layer"),
      ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
      ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}},
       "rope_type 'linear' needs 'factor'"),
  ]
  for change, message in cases:
    with pytest.raises(HFConversionError, match=message):
      hf.config_from_hf({**base, "architectures": ["LlamaForCausalLM"], **change})
  qwen2 = {**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4,
           "max_window_layers": 0}
  assert config_from_hf(qwen2).sliding_window == 4
