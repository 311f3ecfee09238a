"""Hugging Face interop of T5 models (flix.interop, python -m flix.convert): tiny random local
models only.

Every transformers model here is built from a config in-process and saved to tmp_path; nothing
is downloaded.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import peft
import torch
import transformers

from flix import convert
from flix.checkpoints import load_model, save_model, strip_adapters
from flix.decoding import DecodeOptions
from flix.errors import HFConversionError, UnknownFeatureError
from flix.features import parse_features
from flix.interop import hf, hf_files, hf_t5, peft_export
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5, T5Config
import tiny

ATOL = 1e-4
VOCAB = 64
IN_LEN, OUT_LEN = 24, 10  # IN_LEN > max_distance: exercises the log buckets and clipping.


def hf_config(variant: str):
  common = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=3, d_ff=40, num_layers=3,
                num_decoder_layers=2, relative_attention_num_buckets=8,
                relative_attention_max_distance=20, dropout_rate=0.1, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1)  # 3 heads x 8 != d_model 32, as T5 allows.
  if variant == "gated":
    return transformers.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 **common)
  return transformers.T5Config(feed_forward_proj="relu", tie_word_embeddings=True, **common)


def build_hf_model(variant: str, seed: int = 0):
  """A random T5ForConditionalGeneration with non-trivial norms and (gated) an untied head."""
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(hf_config(variant))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
    if variant == "gated":
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn(VOCAB, model.config.d_model) * model.config.d_model**-0.5)
  return model.eval()


def save_hf_model(variant, path, seed=0):
  model = build_hf_model(variant, seed)
  model.save_pretrained(path)
  return model


def inputs():
  enc, dec = tiny.batch(seed=1, size=4, in_len=IN_LEN, out_len=OUT_LEN, vocab=VOCAB)
  return np.asarray(enc), np.asarray(dec)


def hf_logits(model, enc, dec):
  with torch.no_grad():
    enc_t = torch.tensor(enc, dtype=torch.long)
    return model(input_ids=enc_t, attention_mask=(enc_t != 0).long(),
                 decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


def flix_logits(config, params, enc, dec, flix=None, ids=None):
  model = T5(config, flix)
  ids = None if ids is None else jnp.asarray(np.tile(np.asarray(ids)[None], (len(enc), 1)))
  return np.asarray(tiny.apply(model, params, jnp.asarray(enc), jnp.asarray(dec), ids))


def flix_greedy(config, params, enc, length):
  """Greedy decoding with teacher-forced logits (one compile: fixed [batch, length] shape)."""
  dec = np.zeros((len(enc), length), np.int32)
  model = T5(config)
  done = np.zeros(len(enc), bool)
  for step in range(length - 1):
    logits = np.asarray(tiny.apply(model, params, jnp.asarray(enc), jnp.asarray(dec), None))
    nxt = np.where(done, 0, logits[:, step].argmax(-1))
    dec[:, step + 1] = nxt
    done |= nxt == 1
  return dec


def flix_params(config, flix, base=None, seed=0, scale=0.1):
  """Plain numpy params of T5(config, flix): `base`'s leaves (zeros if None), adapters random.

  Shapes come from `jax.eval_shape` (tracing only); values from numpy: no per-shape compiles.
  """
  n_types = flix.space.n_types
  shapes = jax.eval_shape(lambda: T5(config, flix).init(
      jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32),
      jnp.zeros((1, n_types), jnp.int32)))["params"]
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name.startswith("lora_"):
      return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
    if base is None:
      return np.zeros(leaf.shape, np.float32)
    value = base
    for p in path:
      value = value[p.key]
    return value

  return jax.tree_util.tree_map_with_path(fill, nn.unbox(shapes))


@pytest.fixture(scope="module", params=["gated", "relu"])
def converted(request, tmp_path_factory):
  """(variant, HF model, HF dir, flix checkpoint dir) via the CLI entry point."""
  root = tmp_path_factory.mktemp(f"hf_{request.param}")
  hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
  model = save_hf_model(request.param, hf_dir)
  assert convert.main(["from-hf", "--hf_dir", hf_dir, "--out", ckpt]) == 0
  return request.param, model, hf_dir, ckpt


def test_from_hf_logits_and_greedy_match_transformers(converted):
  variant, model, _, ckpt = converted
  config, flix, params = load_model(ckpt)
  assert flix is None
  assert config.logits_via_embedding == (variant == "relu")
  assert config.num_heads * config.head_dim != config.emb_dim
  enc, dec = inputs()
  ref = hf_logits(model, enc, dec)
  ours = flix_logits(config, params, enc, dec)
  assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()

  length = 12
  with torch.no_grad():
    enc_t = torch.tensor(enc, dtype=torch.long)
    out = model.generate(input_ids=enc_t, attention_mask=(enc_t != 0).long(), do_sample=False,
                         num_beams=1, max_new_tokens=length - 1).numpy()
  ours = flix_greedy(config, params, enc, length)
  np.testing.assert_array_equal(ours[:, :out.shape[1]], out)
  assert not ours[:, out.shape[1]:].any()
  cached = np.asarray(EncoderDecoderModel(T5(config)).decode(
      params, jnp.asarray(enc), options=DecodeOptions(length - 1)).tokens)
  np.testing.assert_array_equal(cached, ours[:, 1:])  # decode() leaves out the start token.


def test_verify_t5(converted, capsys):
  """verify on a T5: the checkpoint's logits within 1e-4, greedy tokens equal generate()'s."""
  _, _, hf_dir, ckpt = converted
  capsys.readouterr()
  assert convert.main(["verify", "--hf_dir", hf_dir, "--checkpoint", ckpt]) == 0
  report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert report["architecture"] == "T5ForConditionalGeneration"
  assert report["max_abs_logit_diff"] <= ATOL and report["greedy_equal"], report


@pytest.mark.parametrize("buckets,max_distance,bidirectional", [
    (32, 128, True), (32, 128, False), (38, 256, True), (36, 512, False), (72, 512, True),
    (54, 512, False)])  # The last four differed with T5X's "+ eps" bucketing.
def test_relative_position_buckets_match_transformers(buckets, max_distance, bidirectional):
  from transformers.models.t5.modeling_t5 import T5Attention

  from flix.models.t5 import relative_position_buckets

  positions = np.arange(3000)
  ours = relative_position_buckets(positions, positions[-1:], bidirectional, buckets,
                                   max_distance)[:, 0]
  ref = T5Attention._relative_position_bucket(
      torch.tensor(positions[-1] - positions), bidirectional=bidirectional,
      num_buckets=buckets, max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, ref)
  ours = relative_position_buckets(positions[-1:], positions, bidirectional, buckets,
                                   max_distance)[0]
  ref = T5Attention._relative_position_bucket(
      torch.tensor(positions - positions[-1]), bidirectional=bidirectional,
      num_buckets=buckets, max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, ref)


def test_from_hf_writes_model_gin(converted):
  """CKPT/model.gin parses as gin and binds exactly the checkpoint's T5Config."""
  from gin import config_parser

  class Delegate(config_parser.ParserDelegate):  # Parses without touching gin's global state.
    def configurable_reference(self, name, evaluate):
      return ("@", name, evaluate)

    def macro(self, name):
      return ("%", name)

  _, _, _, ckpt = converted
  config, _, _ = load_model(ckpt)
  text = open(os.path.join(ckpt, "model.gin")).read()
  macros, fields = {}, {}
  for statement in config_parser.ConfigParser(text, Delegate()):
    assert isinstance(statement, config_parser.BindingStatement), statement
    if statement.selector == "T5Config":
      fields[statement.arg_name] = statement.value
    else:
      macros[statement.arg_name or statement.selector] = statement.value
  assert macros["MODEL_CONFIG"] == ("@", "T5Config", True)
  fields = {k: macros[v[1]] if isinstance(v, tuple) and v[:1] == ("%",) else v
            for k, v in fields.items()}
  assert T5Config(**fields) == config


def test_to_hf_then_from_hf_is_exact(converted, tmp_path):
  variant, model, hf_dir, ckpt = converted
  out = str(tmp_path / "back")
  assert convert.main(["to-hf", "--checkpoint", ckpt, "--out", out]) == 0
  config, _, params = load_model(ckpt)
  config2, params2 = hf.load_hf(out)
  assert config2 == config
  flat, flat2 = (jax.tree_util.tree_flatten_with_path(p) for p in (params, params2))
  assert [p for p, _ in flat[0]] == [p for p, _ in flat2[0]]
  for (path, a), (_, b) in zip(flat[0], flat2[0]):
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b), path
  # The files hold the original tensors bit for bit, and transformers loads them as such.
  orig, back = hf_files.read_hf_weights(hf_dir), hf_files.read_hf_weights(out)
  assert set(back) <= set(orig) | {"lm_head.weight"}
  for key, value in back.items():
    assert np.array_equal(value, orig.get(key, orig.get("shared.weight"))), key
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  enc, dec = inputs()
  np.testing.assert_array_equal(hf_logits(reloaded, enc, dec), hf_logits(model, enc, dec))


def test_pytorch_bin_reads_like_safetensors(converted, tmp_path):
  _, model, hf_dir, _ = converted
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  (bin_dir / "config.json").write_text(open(os.path.join(hf_dir, "config.json")).read())
  config, params = hf.load_hf(hf_dir)
  config2, params2 = hf.load_hf(str(bin_dir))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_read_safetensors_bfloat16_and_float16(tmp_path):
  from safetensors.torch import save_file

  tensors = {"a": torch.randn(3, 5).bfloat16(), "b": torch.randn(7).half(),
             "c": torch.randn(2, 2)}
  save_file(tensors, str(tmp_path / "x.safetensors"))
  read = hf_files.read_safetensors(str(tmp_path / "x.safetensors"))
  for key, value in tensors.items():
    np.testing.assert_array_equal(np.asarray(read[key], np.float32), value.float().numpy())


def test_from_hf_gated_without_lm_head_uses_shared(tmp_path):
  """transformers 5.x ties lm_head to shared for every T5 and may leave it out of the file."""
  from safetensors.numpy import save_file

  hf_dir = tmp_path / "hf"
  save_hf_model("gated", str(hf_dir))
  state = hf_files.read_hf_weights(str(hf_dir))
  del state["lm_head.weight"]
  save_file(state, str(hf_dir / "model.safetensors"))
  config_json = json.loads((hf_dir / "config.json").read_text())
  config_json.update(tie_word_embeddings=True, scale_decoder_outputs=False)
  (hf_dir / "config.json").write_text(json.dumps(config_json))
  config, params = hf.load_hf(str(hf_dir))
  assert not config.logits_via_embedding
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                params["token_embedder"]["embedding"].T)
  model = transformers.T5ForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
  enc, dec = inputs()
  diff = np.abs(flix_logits(config, params, enc, dec) - hf_logits(model, enc, dec)).max()
  assert diff <= ATOL, diff
  # transformers 4.x semantics: no lm_head and tie_word_embeddings=false is an error.
  del config_json["scale_decoder_outputs"]
  config_json["tie_word_embeddings"] = False
  (hf_dir / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(HFConversionError, match="missing lm_head.weight"):
    hf.load_hf(str(hf_dir))


# -- adapters -----------------------------------------------------------------------------------
ADAPTER_CASES = {
    # variant, targets, alpha, rslora, features, expected PEFT rank (task 4 + lang 2 + shared 2)
    "gated_all": ("gated", ("*",), 8.0, False, "task=ordinal,lang=fr", 8),
    "relu_some": ("relu", ("*.query", "decoder.encoder_decoder_attention.*", "encoder.mlp.wi"),
                  3.0, True, "task=currency", 6),
}


@pytest.fixture(scope="module", params=sorted(ADAPTER_CASES))
def adapted(request, tmp_path_factory):
  """A flix checkpoint (HF-imported base + random non-zero adapters) and its HF base dir."""
  variant, targets, alpha, rslora, features, rank = ADAPTER_CASES[request.param]
  root = tmp_path_factory.mktemp(f"flix_{request.param}")
  hf_dir = str(root / "hf")
  save_hf_model(variant, hf_dir, seed=3)
  config, base = hf.load_hf(hf_dir)
  flix = tiny.flix(shared_rank=2, alpha=alpha, rslora=rslora, targets=targets)
  # Adapter updates about as large as the base weights: they change the logits by O(1) while
  # float32 rounding stays far below the tolerance (much larger updates amplify rounding).
  params = flix_params(config, flix, base, seed=5, scale=0.1)
  ckpt = save_model(str(root / "ckpt"), params, config, flix)
  base_dir = str(root / "hf_base")
  assert convert.main(["to-hf", "--checkpoint", ckpt, "--out", base_dir]) == 0
  ids = flix.space.encode(parse_features(features), partial=True)
  return dict(config=config, flix=flix, params=params, ckpt=ckpt, base_dir=base_dir,
              features=features, rank=rank, ids=ids, targets=targets, root=root)


def test_export_peft_matches_flix_combination(adapted):
  a = adapted
  out = str(a["root"] / "peft")
  assert convert.main(["export-peft", "--checkpoint", a["ckpt"], "--features", a["features"],
                       "--out", out]) == 0
  adapter_config = json.load(open(os.path.join(out, "adapter_config.json")))
  assert adapter_config["r"] == adapter_config["lora_alpha"] == a["rank"]
  if a["targets"] == ("*",):
    assert adapter_config["target_modules"] == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
  else:
    assert "decoder.block.1.layer.1.EncDecAttention.k" in adapter_config["target_modules"]
    assert not any(m.endswith("SelfAttention.k") for m in adapter_config["target_modules"])

  base = transformers.T5ForConditionalGeneration.from_pretrained(a["base_dir"])
  model = peft.PeftModel.from_pretrained(base, out).eval()
  n_lora = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A.default"))
  _, tensors = peft_export.peft_adapter(a["params"], a["config"], a["flix"], a["ids"])
  assert n_lora == len(tensors) // 2
  enc, dec = inputs()
  ref = flix_logits(a["config"], a["params"], enc, dec, a["flix"], a["ids"])
  base_only = flix_logits(a["config"], strip_adapters(a["params"]), enc, dec)
  assert np.abs(ref - base_only).max() > 0.1  # The adapters matter.
  ours = hf_logits(model, enc, dec)
  assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()


def test_to_hf_with_features_equals_merged_flix_model(adapted):
  a = adapted
  out = str(a["root"] / "merged")
  assert convert.main(["to-hf", "--checkpoint", a["ckpt"], "--features", a["features"],
                       "--out", out]) == 0
  model = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  enc, dec = inputs()
  merged = peft_export.merge_params(a["params"], a["flix"], a["ids"])
  ref = flix_logits(a["config"], merged, enc, dec)
  ours = hf_logits(model, enc, dec)
  assert np.abs(ours - ref).max() <= ATOL, np.abs(ours - ref).max()
  adapter_path = flix_logits(a["config"], a["params"], enc, dec, a["flix"], a["ids"])
  assert np.abs(ours - adapter_path).max() <= ATOL


# -- errors -------------------------------------------------------------------------------------
def test_missing_weights_file(tmp_path, capsys):
  (tmp_path / "config.json").write_text(hf_config("gated").to_json_string())
  with pytest.raises(HFConversionError, match="no weights file.*model.safetensors"):
    hf.load_hf(str(tmp_path))
  assert convert.main(["from-hf", "--hf_dir", str(tmp_path), "--out",
                       str(tmp_path / "ckpt")]) == 1
  assert "model.safetensors" in capsys.readouterr().err
  assert not (tmp_path / "ckpt").exists()


def test_unsupported_config_fields(tmp_path):
  base = json.loads(hf_config("gated").to_json_string())
  cases = [({"feed_forward_proj": "gated-silu"}, "feed_forward_proj 'gated-silu'"),
           ({"model_type": "umt5"}, "model_type 'umt5'"),
           ({"feed_forward_proj": "relu", "tie_word_embeddings": False,
             "scale_decoder_outputs": False}, "tie_word_embeddings=false"),
           ({"tie_word_embeddings": True, "scale_decoder_outputs": True},
            "tie_word_embeddings=true")]
  for change, message in cases:
    with pytest.raises(HFConversionError, match=message):
      hf_t5.config_from_hf({**base, **change})
  with pytest.raises(HFConversionError, match="config.json is missing"):
    hf.load_hf(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
  from safetensors.numpy import save_file

  hf_dir = tmp_path / "hf"
  save_hf_model("gated", str(hf_dir))
  state = hf_files.read_hf_weights(str(hf_dir))
  del state["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
  save_file(state, str(hf_dir / "model.safetensors"))
  with pytest.raises(HFConversionError, match=r"missing decoder\.block\.1\.layer\.2"):
    hf.load_hf(str(hf_dir))


def test_unknown_feature_value_is_named(tmp_path, capsys):
  config = tiny.t5_config()
  flix = tiny.flix(shared_rank=0)
  params = flix_params(config, flix)
  ckpt = save_model(str(tmp_path / "ckpt"), params, config, flix)
  for command in ("to-hf", "export-peft"):
    assert convert.main([command, "--checkpoint", ckpt, "--features", "task=ordinal,lang=xx",
                         "--out", str(tmp_path / command)]) == 1
    err = capsys.readouterr().err
    assert "'xx'" in err and "'lang'" in err and "['en', 'fr', 'de', 'fi']" in err, err
    assert not (tmp_path / command).exists()
  with pytest.raises(UnknownFeatureError, match="'colour'.*known types"):
    convert.to_hf(ckpt, str(tmp_path / "x"), features="colour=red")
  with pytest.raises(HFConversionError, match="nothing to export"):
    convert.export_peft(ckpt, "", str(tmp_path / "y"))
