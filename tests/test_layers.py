"""FlixDense: no-op at init, strategies agree, LoRA equivalence, id validation, compact rows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flix import layers, rows
from flix.config import FlixConfig
from flix.features import FeatureSpace
from flix.layers import FlixDense
import tiny

STRATEGIES = ("masked", "gather", "ragged")
# Strategies reorder float32 sums; everything is O(1), so 2e-5 bounds the rounding.
TOL = dict(rtol=2e-5, atol=2e-5)


def x_and_ids(batch=6, length=3, d_in=16, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, length, d_in))
  return x, jnp.asarray(tiny.MIXED_IDS[:batch])


def layer_and_params(flix, d_out=8, seed=1, randomize=True):
  layer = FlixDense(d_out, ("embed", "mlp"), flix)
  x, ids = x_and_ids()
  params = layer.init(jax.random.key(seed), x, ids)["params"]
  return layer, (tiny.randomize_adapters(params, seed) if randomize else nn.unbox(params))


def test_fresh_adapters_are_exact_noop():
  x, ids = x_and_ids()
  for strategy in STRATEGIES:
    layer, params = layer_and_params(tiny.flix(strategy=strategy),
                                     randomize=False)
    assert not np.any(params["lora_b_task"]) and np.any(params["lora_a_task"])
    base = x.reshape(-1, 16) @ params["kernel"]
    np.testing.assert_array_equal(layer.apply({"params": params}, x, ids).reshape(-1, 8), base)


def test_strategies_agree_on_outputs_and_gradients():
  x, ids = x_and_ids()
  results = {}
  for strategy in STRATEGIES:
    layer, params = layer_and_params(tiny.flix(alpha=6.0, strategy=strategy))
    loss = lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x, ids)))
    results[strategy] = (layer.apply({"params": params}, x, ids),
                         jax.grad(loss, argnums=(0, 1))(params, x))
  ref_y, ref_g = results["masked"]
  for strategy in ("gather", "ragged"):
    y, g = results[strategy]
    np.testing.assert_allclose(y, ref_y, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g, ref_g)
  # Gradients reach only the rows of features some example uses: lang value 1 is unused.
  assert not np.any(ref_g[0]["lora_b_lang"][1]) and np.any(ref_g[0]["lora_b_lang"][0])


def test_example_rows_one_hot_equals_take_exactly():
  """Small tables are gathered by a one-hot matmul, large ones by take: same rows and gradients."""
  table = jax.random.normal(jax.random.key(3), (5, 4, 16))
  ids = jnp.asarray([4, 0, 2, 2, 1, 4], jnp.int32)
  w = jax.random.normal(jax.random.key(4), (6, 4, 16))

  def loss(t, tokens):
    return jnp.sum(w * layers.example_rows(t, ids, tokens))

  by_matmul, by_take = layers.example_rows(table, ids, 5), layers.example_rows(table, ids, 4)
  np.testing.assert_array_equal(by_matmul, by_take)
  np.testing.assert_array_equal(by_take, np.asarray(table)[np.asarray(ids)])
  grad_matmul, grad_take = jax.grad(loss)(table, 5), jax.grad(loss)(table, 4)
  np.testing.assert_allclose(grad_matmul, grad_take, rtol=1e-6, atol=1e-6)
  assert not np.any(grad_matmul[3])  # Row 3 is nobody's: no gradient.


def test_adapter_math_matches_hand_computation():
  """y = x W + sum_t s_t x A_t[f]^T B_t[f] + s_shared x A^T B, per example, with s = alpha / r."""
  flix = tiny.flix(alpha=6.0)
  layer, p = layer_and_params(flix)
  x, ids = x_and_ids()
  y = np.asarray(layer.apply({"params": p}, x, ids))
  xn = np.asarray(x, np.float64)
  for i, (task, lang) in enumerate(np.asarray(ids)):
    w = np.asarray(p["kernel"], np.float64) + 6.0 / 2 * p["lora_a_shared"].T @ p["lora_b_shared"]
    if task >= 0:
      w = w + 6.0 / 4 * np.asarray(p["lora_a_task"][task]).T @ np.asarray(p["lora_b_task"][task])
    if lang >= 0:
      w = w + 6.0 / 2 * np.asarray(p["lora_a_lang"][lang]).T @ np.asarray(p["lora_b_lang"][lang])
    np.testing.assert_allclose(y[i], xn[i] @ w, rtol=1e-5, atol=1e-5)


def test_shared_only_equals_hand_written_lora():
  rank, alpha = 4, 8.0
  for rslora in (False, True):
    layer, p = layer_and_params(FlixConfig.lora(rank, alpha=alpha, rslora=rslora))
    x, _ = x_and_ids()
    scale = alpha / (np.sqrt(rank) if rslora else rank)
    lora = x @ p["kernel"] + scale * (x @ p["lora_a_shared"].T) @ p["lora_b_shared"]
    np.testing.assert_allclose(layer.apply({"params": p}, x, None), lora, **TOL)
    assert set(p) == {"kernel", "lora_a_shared", "lora_b_shared"}


def test_lora_a_init_matches_peft_bound():
  layer, p = layer_and_params(tiny.flix(), randomize=False)
  bound = 1 / np.sqrt(16)  # kaiming_uniform(a=sqrt(5)) on fan_in = d_in = 16.
  a = np.asarray(p["lora_a_task"])
  assert a.shape == (3, 4, 16) and np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound


@pytest.mark.parametrize("strategy", ["masked", "gather", "ragged"])
def test_out_of_range_ids_raise_eagerly_and_poison_under_jit(strategy):
  layer, p = layer_and_params(tiny.flix(strategy=strategy))
  x, ids = x_and_ids()
  bad = ids.at[2, 1].set(4)  # lang has 4 values: 0..3.
  with pytest.raises(ValueError, match=r"feature id 4 in column 1 \(example 2\).*0\.\.3"):
    layer.apply({"params": p}, x, bad)
  with pytest.raises(ValueError, match="feature id -3"):
    layer.apply({"params": p}, x, ids.at[0, 0].set(-3))
  y = jax.jit(lambda i: layer.apply({"params": p}, x, i))(bad)
  assert np.all(np.isnan(y[2])), "the example with the bad id must not give a finite output"
  assert np.all(np.isfinite(np.delete(np.asarray(y), 2, axis=0)))


def test_wrong_shapes_and_missing_ids_raise():
  layer, p = layer_and_params(tiny.flix())
  x, ids = x_and_ids()
  with pytest.raises(ValueError, match=r"shape \[batch=6, n_types=2\], got \(6, 3\)"):
    layer.apply({"params": p}, x, jnp.zeros((6, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"shape \[batch=6, n_types=2\], got \(5, 2\)"):
    layer.apply({"params": p}, x, ids[:5])
  with pytest.raises(ValueError, match="needs feature_ids"):
    layer.apply({"params": p}, x, None)
  with pytest.raises(ValueError, match="integers"):
    layer.apply({"params": p}, x, ids.astype(jnp.float32))


def test_compact_rows_give_dense_outputs_and_gradients():
  """Running on the batch's rows only (flix.rows) equals the full tables, gradients included."""
  flix = tiny.flix(strategy="gather")
  layer, p = layer_and_params(flix)
  x, ids = x_and_ids(batch=2)  # 2 examples: tables shrink to 2 rows per type.
  loss = lambda l, p, i: jnp.sum(jnp.sin(l.apply({"params": p}, x, i)))
  dense_y = layer.apply({"params": p}, x, ids)
  dense_g = jax.grad(loss, argnums=1)(layer, p, ids)

  small = FlixDense(8, ("embed", "mlp"), flix.replace(row_limit=2))
  r = rows.active_rows(ids, flix)
  cp, cids = rows.take_rows(p, flix, r), rows.compact_ids(ids, r, flix)
  assert cp["lora_a_task"].shape == (2, 4, 16) and cp["lora_a_lang"].shape == (2, 2, 16)
  np.testing.assert_allclose(small.apply({"params": cp}, x, cids), dense_y, **TOL)
  compact_g = jax.grad(loss, argnums=1)(small, cp, cids)
  zeros = jax.tree.map(jnp.zeros_like, p)
  scattered = rows.put_rows(zeros, compact_g, flix, r)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), scattered, dense_g)


def test_active_rows_pads_and_renumbers():
  flix = tiny.flix()
  ids = jnp.array([[2, -1], [0, 3], [2, 3]], jnp.int32)
  task_rows, lang_rows = rows.active_rows(ids, flix)
  np.testing.assert_array_equal(task_rows, [0, 2, 3])  # 3 = padding (F_task).
  np.testing.assert_array_equal(lang_rows, [3, 4, 4])  # 4 = padding (F_lang).
  np.testing.assert_array_equal(rows.compact_ids(ids, (task_rows, lang_rows), flix),
                                [[1, -1], [0, 0], [1, 0]])


@pytest.mark.parametrize("bad_id", [12, 10, -5])
def test_bad_ids_stay_bad_on_compact_tables(bad_id):
  """An out-of-range id must not become a valid compact id (its example comes out NaN under
  jit on the full and on the compact table alike), and it is not an active row."""
  flix = FlixConfig(FeatureSpace.build({"task": [f"t{i}" for i in range(10)]}), 2)
  ids = jnp.array([[3], [bad_id]], jnp.int32)
  (task_rows,) = rows.active_rows(ids, flix)
  np.testing.assert_array_equal(task_rows, [3, 10])  # 10 = padding (F): the bad id is no row.
  cids = rows.compact_ids(ids, (task_rows,), flix)
  np.testing.assert_array_equal(cids, [[0], [2]])  # 2 = one past the 2-row compact table.
  layer = FlixDense(8, ("embed", "mlp"), flix)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))
  p = tiny.randomize_adapters(layer.init(jax.random.key(1), x, jnp.zeros((2, 1), jnp.int32)
                                         )["params"])
  full = jax.jit(lambda p, i: layer.apply({"params": p}, x, i))(p, ids)
  small = FlixDense(8, ("embed", "mlp"), flix.replace(row_limit=2))
  compact = jax.jit(lambda p, i: small.apply({"params": p}, x, i))(
      rows.take_rows(p, flix, (task_rows,)), cids)
  for out in (full, compact):
    assert np.isfinite(np.asarray(out[0])).all() and np.isnan(np.asarray(out[1])).all()
  np.testing.assert_allclose(compact[0], full[0], rtol=1e-5, atol=1e-6)


def test_auto_strategy_choice():
  # masked only while the tables' columns are at most 2x an example's own (and at most 64).
  two = FlixConfig(FeatureSpace.build({"task": list("ab"), "lang": list("wx")}), 8)
  assert (two.table_rank, two.example_rank) == (32, 16) and two.resolved_strategy() == "masked"
  assert two.replace(row_limit=1).resolved_strategy() == "masked"
  small = FlixConfig(FeatureSpace.build({"task": list("abcd"), "lang": list("wxyz")}), 8)
  assert small.table_rank == 64 and small.resolved_strategy() == "gather"  # 4x: gather.
  assert small.replace(row_limit=2).resolved_strategy() == "masked"  # compact rows: 2x.
  three = FlixConfig(FeatureSpace.build({"task": list("abc"), "lang": list("x")}), 16)
  assert (three.table_rank, three.example_rank) == (64, 32)
  assert three.resolved_strategy() == "masked"
  wide = FlixConfig(FeatureSpace.build({"task": list("abc"), "lang": list("xy")}), 16)
  assert wide.table_rank == 80 and wide.resolved_strategy() == "gather"  # > 64 columns.
  assert small.replace(strategy="masked").resolved_strategy() == "masked"
  assert small.replace(strategy="ragged").resolved_strategy() == "ragged"


def test_one_definition_of_adapter_tables():
  """A feature type may end in "_shared": its tables are tables everywhere (per-row optimizer
  state, rows), and only `lora_[ab]_shared` is the shared adapter."""
  from flix.layers import is_adapter_name, table_type
  from flix.training.optimizers import make_optimizer
  assert table_type("lora_a_task") == "task" and table_type("lora_b_x_shared") == "x_shared"
  assert table_type("lora_a_shared") is None and table_type("kernel") is None
  assert is_adapter_name("lora_b_shared") and not is_adapter_name("kernel")
  space = FeatureSpace.build({"x_shared": ["a", "b", "c"]})
  layer, p = layer_and_params_1type(FlixConfig(space, ranks=2, shared_rank=2))
  state = make_optimizer("adamw", 1e-3).init(p)
  counts = {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
            if "count" in jax.tree_util.keystr(path)}
  assert any("lora_a_x_shared" in k and s == (3,) for k, s in counts.items()), counts
  assert any("lora_a_shared" in k and s == () for k, s in counts.items()), counts


def layer_and_params_1type(flix):
  layer = FlixDense(8, ("embed", "mlp"), flix)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))
  return layer, nn.unbox(layer.init(jax.random.key(1), x, jnp.zeros((2, 1), jnp.int32))["params"])


def test_merge_refuses_compact_tables():
  from flix import merge
  flix = FlixConfig(FeatureSpace.build({"task": [f"t{i}" for i in range(10)]}), 2)
  _, p = layer_and_params_1type(flix)
  compact = rows.take_rows(p, flix, (jnp.array([3, 10]),))
  with pytest.raises(ValueError, match="merge needs the full tables"):
    merge.merge(compact, flix, np.array([1]))
  np.testing.assert_allclose(merge.merge(p, flix, np.array([1])),
                             p["kernel"] + p["lora_a_task"][1].T @ p["lora_b_task"][1], atol=1e-6)
