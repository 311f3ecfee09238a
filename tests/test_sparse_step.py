"""Lazy row-sparse train steps and row-separable optimizers (flix.training.sparse_step)."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5
from flix.rows import check_row_indexable
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.sparse_step import make_row_sparse_train_step
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step

ALL_ROWS = np.array([[0, 0], [1, 1], [2, 2], [0, 3], [1, -1], [2, 0]], np.int32)  # 3 tasks, 4 langs.
SOME_ROWS = np.array([[0, 0], [1, 1], [0, 2], [1, -1], [-1, 0], [0, 1]], np.int32)  # No task 2, lang 3.
TABLES = ("lora_a_task", "lora_b_task", "lora_a_lang", "lora_b_lang")


@functools.lru_cache(maxsize=None)
def model(feature_dropout=0.0):
  """1 + 1 layers, adapters on a few projections: seconds to compile."""
  flix = tiny.flix(targets=("*.value", "decoder.mlp.wo"))
  return EncoderDecoderModel(T5(tiny.t5_config(num_encoder_layers=1, num_decoder_layers=1), flix),
                             z_loss=0.0, feature_dropout=feature_dropout)


def make_batch(ids, seed=0):
  enc, dec = tiny.batch(seed)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": jnp.roll(dec, -1, axis=1),
          "decoder_loss_weights": jnp.ones(dec.shape, jnp.float32),
          "feature_ids": jnp.asarray(ids)}


@functools.lru_cache(maxsize=None)
def stepper(opt_name, per_row, sparse, lazy=True, feature_dropout=0.0):
  """(initial state, jitted step) from seeded params; compiled once per configuration."""
  m = model(feature_dropout)
  params = tiny.random_params(m.module, seed=1, adapter_scale=0.1)
  optimizer = freeze_base(make_optimizer(opt_name, learning_rate=1e-2, weight_decay=0.01,
                                         per_row=per_row), params, "flix")
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))
  make_step = make_row_sparse_train_step if sparse else make_train_step
  return state, jax.jit(make_step(m, optimizer, trainable_mask(params), StepConfig(
      lazy_rows=lazy)))


def run(opt_name, per_row, sparse, ids_per_step, lazy=True, feature_dropout=0.0):
  """States after each step."""
  state, step = stepper(opt_name, per_row, sparse, lazy, feature_dropout)
  states = []
  for i, ids in enumerate(ids_per_step):
    state, metrics = step(state, make_batch(ids, seed=i))
    assert np.isfinite(metrics["loss"])
    states.append(state)
  return states


def leaves_with_table(tree, name):
  """(path, leaf) of every leaf of `tree` under the table key `name`."""
  return [(p, v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if any(getattr(k, "key", None) == name for k in p)]


# Tolerances: same math, different gather/scatter fusions, so float32 rounding only; Adam
# divides by sqrt(nu), which amplifies rounding in near-zero gradients: 1e-5 absolute on params
# after 3 steps of lr 1e-2 is 1e-3 of one step.
TOL = dict(rtol=1e-5, atol=1e-5)


def assert_states_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a.params, b.params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), a.opt_state, b.opt_state)


@pytest.mark.parametrize("opt", ["adamw", "adafactor"])
@pytest.mark.parametrize("rows", ["all", "some"])
def test_lazy_dense_step_equals_row_sparse_step(opt, rows):
  """The default (lazy) dense step and the row-sparse step give the same params and optimizer
  state, with every row present and with rows absent (the batch of 6 is smaller than the 3 + 4
  rows, so the compact tables really are compact)."""
  steps = [ALL_ROWS] * 3 if rows == "all" else [ALL_ROWS, SOME_ROWS, SOME_ROWS]
  dense = run(opt, True, False, steps)[-1]
  sparse = run(opt, True, True, steps)[-1]
  assert_states_close(dense, sparse)
  start = stepper(opt, True, False)[0].params["decoder"]["layers_0"]["mlp"]["wo"]["lora_b_task"]
  assert not np.allclose(dense.params["decoder"]["layers_0"]["mlp"]["wo"]["lora_b_task"], start)


def test_feature_dropout_on_lazy_dense_and_row_sparse_steps():
  """Feature dropout draws the same mask on both paths (from the step's rng), so they agree."""
  steps = [ALL_ROWS] * 3
  dense = run("adamw", True, False, steps, feature_dropout=0.5)[-1]
  sparse = run("adamw", True, True, steps, feature_dropout=0.5)[-1]
  assert_states_close(dense, sparse)
  undropped = run("adamw", True, True, steps)[-1]
  b = lambda s: s.params["decoder"]["layers_0"]["mlp"]["wo"]["lora_b_lang"]
  assert not np.allclose(b(sparse), b(undropped))


def test_plain_dense_step_moves_absent_rows():
  """StepConfig.lazy_rows=False is the plain dense update: momentum moves an absent row."""
  steps = [ALL_ROWS, SOME_ROWS, SOME_ROWS]
  first, _, plain = run("adamw", True, False, steps, lazy=False)
  b = lambda s: np.asarray(s.params["decoder"]["layers_0"]["mlp"]["wo"]["lora_b_lang"])[3]
  assert not np.allclose(b(first), b(plain))
  lazy = run("adamw", True, False, steps)
  np.testing.assert_array_equal(b(lazy[0]), b(lazy[-1]))


def test_per_row_adamw_equals_optax_adamw_when_all_rows_train():
  steps = [ALL_ROWS] * 3
  plain = run("adamw", False, False, steps, lazy=False)[-1]
  sparse = run("adamw", True, True, steps)[-1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), plain.params, sparse.params)


@pytest.mark.parametrize("opt", ["adamw", "adafactor"])
def test_absent_rows_are_bitwise_unchanged(opt):
  first, *rest = run(opt, True, True, [ALL_ROWS, SOME_ROWS, SOME_ROWS])
  last = rest[-1]
  absent = {"task": 2, "lang": 3}
  for name in TABLES:
    row = absent[name.rsplit("_", 1)[1]]
    before = leaves_with_table((first.params, first.opt_state), name)
    after = leaves_with_table((last.params, last.opt_state), name)
    assert len(before) == len(after) >= 3 * 3  # Params and state of every adapted projection.
    for (path, x), (_, y) in zip(before, after):
      np.testing.assert_array_equal(np.asarray(x)[row], np.asarray(y)[row],
                                    err_msg=jax.tree_util.keystr(path))
    # Row 1 is present: its params and some of its state (counts, moments) move. (Adafactor's
    # unused factored slots are constant placeholders.)
    moved = [not np.array_equal(np.asarray(x)[1], np.asarray(y)[1])
             for (_, x), (_, y) in zip(before, after)]
    n_params = len(leaves_with_table(first.params, name))
    assert all(moved[:n_params]) and sum(moved[n_params:]) >= 2 * n_params


def test_row_mixing_optimizer_is_refused():
  m = model()
  params = tiny.random_params(m.module)
  plain_adafactor = make_optimizer("adafactor", learning_rate=1e-2, per_row=False)
  with pytest.raises(ValueError, match=r"not indexed by row .*make_optimizer.per_row = True"):
    check_row_indexable(freeze_base(plain_adafactor, params, "flix").init, params, m.flix)
  per_row = make_optimizer("adafactor", learning_rate=1e-2, per_row=True)
  check_row_indexable(freeze_base(per_row, params, "flix").init, params, m.flix)
  with pytest.raises(ValueError, match="need feature tables"):
    make_row_sparse_train_step(EncoderDecoderModel(T5(tiny.t5_config())), optax.sgd(0.1), {})
  plain = freeze_base(plain_adafactor, params, "flix")
  state = TrainState(step=jnp.int32(0), params=params, opt_state=plain.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))
  lazy = make_train_step(m, plain, trainable_mask(params))
  with pytest.raises(ValueError, match=r"lazy dense steps \(StepConfig.lazy_rows"):
    jax.eval_shape(lazy, state, make_batch(ALL_ROWS))


ROW_SPARSE = ["--gin.train.step_config=@StepConfig()", "--gin.StepConfig.row_sparse=True",
              "--gin.CHECKPOINT_PERIOD=3",
              "--gin.TRAIN_STEPS=6", "--gin.T5Config.num_encoder_layers=1",
              "--gin.T5Config.num_decoder_layers=1"]


def test_trainer_row_sparse_resume_is_exact(tmp_path):
  from entry import assert_trees_equal, run_train, saved_state
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  assert run_train(straight, *ROW_SPARSE) == 0  # Saves checkpoints 3 and 6.
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoint_6")
  assert run_train(resumed, *ROW_SPARSE) == 0  # Resumes at step 3.
  a, b = saved_state(straight / "checkpoint_6"), saved_state(resumed / "checkpoint_6")
  assert_trees_equal(a, b)
  assert "StepConfig.row_sparse = True" in (straight / "config.gin").read_text()
  losses = [json.loads(l)["loss"] for l in (straight / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 4 and all(np.isfinite(losses))  # Steps 2, 3 (saved), 4, 6.
