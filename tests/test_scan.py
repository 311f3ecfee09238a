"""Scanned layer stacks (`flix.models.scan`, `StepConfig.scan_layers`): the scanned network reads
the unscanned parameter tree and gives its outputs and gradients; FLix tables stacked inside the
scan carry the layer axis and keep their configured shardings; cached decoding gives the same
tokens; `flix.compile` compiles a scanned step."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flix.decoding import DecodeOptions
from flix.features import FeatureSpace
from flix.layers import table_type
from flix.models import decode_fns, scan
from flix.models.decoder import DecoderConfig, DecoderLM
from flix.models.t5 import T5
from flix.training import loop
from flix.training.optimizers import make_optimizer
from flix.training.partitioning import Partitioner
from flix.training.step import StepConfig
import tiny

T5_CONFIG = tiny.t5_config(num_encoder_layers=2, num_decoder_layers=2)
DECODER = DecoderConfig(vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=48, num_layers=2)


def close(got, want, rtol=2e-5):
  """Float32 agreement relative to the tree's largest magnitude (summation order differs)."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = max(float(np.max(np.abs(w))), 1e-6)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=rtol * scale)


def t5_pair(remat_policy="none"):
  """(unscanned T5, scanned T5, random params of the unscanned tree, adapters included)."""
  plain, boxed = tiny.model_and_params(tiny.flix(), num_encoder_layers=2,
                                       num_decoder_layers=2)
  scanned = T5(T5_CONFIG, tiny.flix(), remat_policy, scan_layers=True)
  return plain, scanned, tiny.randomize_adapters(nn.unbox(boxed))


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_scanned_t5_equals_unscanned_on_its_parameters(remat_policy):
  plain, scanned, params = t5_pair(remat_policy)
  enc, dec = tiny.batch()
  ids = jnp.asarray(tiny.MIXED_IDS)
  loss = lambda model: jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, enc, dec, ids)))))
  want, want_grads = loss(plain)(params)
  got, got_grads = loss(scanned)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert jax.tree.structure(got_grads) == jax.tree.structure(want_grads)
  close(got_grads, want_grads)
  # Every adapter of both layers gets a gradient (a table row the batch uses is non-zero).
  table = got_grads["decoder"]["layers_1"]["mlp"]["wo"]["lora_b_lang"]
  assert float(jnp.abs(table).max()) > 0


def test_scanned_init_is_the_unscanned_tree_with_its_axis_names():
  plain = T5(T5_CONFIG, tiny.flix())
  scanned = plain.clone(scan_layers=True)
  enc, dec = tiny.batch()
  ids = jnp.zeros((6, 2), jnp.int32)
  init = lambda model: jax.eval_shape(
      lambda: model.init(jax.random.key(0), enc, dec, ids)["params"])
  want, got = init(plain), init(scanned)
  is_box = lambda x: isinstance(x, nn.Partitioned)
  assert jax.tree.structure(got, is_leaf=is_box) == jax.tree.structure(want, is_leaf=is_box)
  for g, w in zip(jax.tree.leaves(got, is_leaf=is_box), jax.tree.leaves(want, is_leaf=is_box)):
    assert g.value.shape == w.value.shape and tuple(g.names) == tuple(w.names)


def test_stacked_tables_carry_the_layer_axis_and_their_shardings():
  """Inside the scan a table is `[L, F, r, d]` on (layers, flix_feature, flix_rank, kernel
  axis); under the partitioner the layer axis stays whole and the rest is sharded as the
  unscanned table is (here with its feature axis over all 8 devices and 2-D partitioning)."""
  space = FeatureSpace.build({"task": [f"t{i}" for i in range(8)], "lang": ["a", "b"]})
  flix = tiny.FlixConfig(space, ranks=2)
  model = T5(T5_CONFIG, flix, scan_layers=True)
  enc, dec = tiny.batch()
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), enc, dec,
                                            jnp.zeros((6, 2), jnp.int32))["params"])
  stacked = scan.stack_layers(boxed, model.stacks())
  # The flax init of the scanned stack itself (no unstacking) has the same stacked tree.
  raw = jax.eval_shape(lambda: nn.Module.init_with_output(
      model, jax.random.key(0), enc, dec, jnp.zeros((6, 2), jnp.int32))[1]["params"])
  is_box = lambda x: isinstance(x, nn.Partitioned)
  assert jax.tree.structure(raw, is_leaf=is_box) == jax.tree.structure(stacked, is_leaf=is_box)
  partitioner = Partitioner(mesh_shape=(4, 2), devices=jax.devices()[:8],
                            parameter_partitioning_dims=2, feature_shard_rows=8)
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(
      partitioner.shardings(stacked), is_leaf=lambda x: hasattr(x, "spec"))}
  boxes = {jax.tree_util.keystr(p): b for p, b in jax.tree_util.tree_leaves_with_path(
      raw, is_leaf=is_box)}
  plain_specs = {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
      partitioner.shardings(boxed), is_leaf=lambda x: hasattr(x, "spec"))}
  key = "['encoder']['layers']['mlp']['wi_0']['lora_a_task']"
  assert tuple(boxes[key].names) == ("layers", "flix_feature", "flix_rank", "embed")
  assert boxes[key].value.shape == (2, 8, 2, T5_CONFIG.emb_dim)
  assert tuple(flat[key].spec) == (None, ("data", "model"), None, None)
  tables = [k for k in flat if table_type(k.split("'")[-2]) is not None]
  assert len(tables) == 2 * 2 * 18  # A and B of 2 types on T5's 18 projections.
  for k in tables:
    unscanned = k.replace("['layers']", "['layers_1']")
    assert tuple(flat[k].spec) == (None, *plain_specs[unscanned]), k
    assert boxes[k].names[0] == "layers" and boxes[k].value.shape[0] == 2


def test_stack_and_unstack_are_inverse_and_refuse_a_partial_stack():
  _, scanned, params = t5_pair()
  stacked = scan.stack_layers(params, scanned.stacks())
  assert set(stacked["encoder"]) == {"layers", "relpos_bias", "encoder_norm"}
  assert stacked["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (
      2, T5_CONFIG.emb_dim, T5_CONFIG.num_heads * T5_CONFIG.head_dim)
  back = scan.unstack_layers(stacked, scanned.stacks())
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  partial = {**params, "encoder": {k: v for k, v in params["encoder"].items()
                                   if k != "layers_1"}}
  with pytest.raises(ValueError, match=r"encoder's 2 layers: \['layers_1'\] are missing"):
    scan.stack_layers(partial, scanned.stacks())


def test_scanned_t5_decodes_as_unscanned():
  """Greedy and beam search with the KV cache (stacked on the layer axis inside the scan)."""
  plain, scanned, params = t5_pair()
  enc, _ = tiny.batch()
  ids = jnp.asarray(tiny.MIXED_IDS)
  for options in (DecodeOptions(max_length=5), DecodeOptions(max_length=4, method="beam",
                                                             num_beams=2)):
    want = decode_fns.encoder_decoder(plain, params, enc, ids, options, None)
    got = decode_fns.encoder_decoder(scanned, params, enc, ids, options, None)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)


def decoder_pair():
  flix = tiny.flix(shared_rank=0)
  plain, scanned = DecoderLM(DECODER, flix), DecoderLM(DECODER, flix, scan_layers=True)
  params = tiny.randomize_adapters(nn.unbox(plain.init(
      jax.random.key(1), jnp.ones((6, 7), jnp.int32), jnp.zeros((6, 2), jnp.int32))["params"]))
  return plain, scanned, params


def test_scanned_decoder_equals_unscanned_and_decodes_the_same():
  plain, scanned, params = decoder_pair()
  tokens = jnp.asarray(np.random.RandomState(0).randint(1, 64, (6, 7)), jnp.int32)
  ids = jnp.asarray(tiny.MIXED_IDS)
  loss = lambda model: jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, tokens, ids)))))
  want, want_grads = loss(plain)(params)
  got, got_grads = loss(scanned)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  close(got_grads, want_grads)
  lengths = jnp.asarray([7, 3, 5, 1, 7, 2], jnp.int32)
  options = DecodeOptions(max_length=4)
  want = decode_fns.decoder_only(plain, params, tokens, lengths, ids, options, None,
                                 bidirectional=False)
  got = decode_fns.decoder_only(scanned, params, tokens, lengths, ids, options, None,
                                bidirectional=False)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)


def test_step_config_refuses_a_non_bool_switch():
  with pytest.raises(ValueError, match="StepConfig.scan_layers must be True or False, got 1"):
    StepConfig(scan_layers=1)


def test_compile_report_of_a_scanned_step_on_a_cpu_mesh(tmp_path):
  """`flix.compile` with `--gin.StepConfig.scan_layers=True` (the tiny decoder gin, cpu:8):
  2 layers, the same tables, shardings and parameter bytes as unscanned."""
  from test_compile import GIN_DIR, TARGETS, check_report, run_cli
  reports = {}
  for scanned in (False, True):
    out = str(tmp_path / f"{scanned}.json")
    code, err = run_cli(f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN_DIR}/tiny_decoder.gin",
                        "--topology=cpu:8", "--mesh=4,2", "--feature_space=task:3,lang:5",
                        f"--gin.TARGETS={TARGETS!r}", "--gin.DecoderConfig.num_layers=2",
                        "--gin.train.step_config=@StepConfig()",
                        f"--gin.StepConfig.scan_layers={scanned}", f"--json={out}")
    assert code == 0, err
    with open(out) as f:
      reports[scanned] = json.load(f)
    check_report(reports[scanned], "cpu:8", "cpu", (4, 2))
  assert reports[True]["flix_tables"] == reports[False]["flix_tables"]
  assert reports[True]["memory"]["params_bytes"] == reports[False]["memory"]["params_bytes"]
  # The jaxpr's matmul count runs each scan body once per layer, while XLA's cost analysis
  # counts the scanned loop's body once. The scanned step does a little more: every layer of
  # the loop computes its input's gradient, the first one too, which the unrolled step skips
  # (the frozen embedding below it needs none): 7.8% more matmul flops at 2 layers.
  scanned, unscanned = reports[True]["cost"], reports[False]["cost"]
  assert unscanned["model_flops_per_device"] > 0
  assert (unscanned["model_flops_per_device"] < scanned["model_flops_per_device"]
          < 1.1 * unscanned["model_flops_per_device"])
  assert scanned["flops"] < 0.9 * unscanned["flops"]
