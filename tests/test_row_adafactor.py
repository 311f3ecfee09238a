"""flix.training.row_adafactor: optax's per-row Adafactor scaling, on the stacked table."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flix.training.row_adafactor import (FactoredTableRms, TableRms, factored_dims,
                                         scale_table_rows_by_rms)


def vmapped_optax(min_dim):
  inner = optax.chain(optax.scale_by_factored_rms(decay_rate=0.8, min_dim_size_to_factor=min_dim),
                      optax.clip_by_block_rms(1.0))
  return optax.GradientTransformation(jax.vmap(inner.init), jax.vmap(inner.update))


def with_counts(state, counts):
  """Both transformations' states with per-row step counts `counts` (lazy rows lag behind)."""
  if isinstance(state, (TableRms, FactoredTableRms)):
    return state._replace(count=counts)
  (rms, clip) = state
  return (rms._replace(count=counts), clip)


# (table shape, min_dim_size_to_factor): unfactored [r, d] rows (the FLix case: rank < 128), and
# factored rows of both orientations and of a 3-D row.
CASES = [((5, 8, 32), 128), ((5, 8, 32), 8), ((5, 32, 8), 8), ((5, 6, 12, 40), 8)]


@pytest.mark.parametrize("shape,min_dim", CASES)
def test_equals_optax_vmapped_over_rows(shape, min_dim):
  ref, new = vmapped_optax(min_dim), scale_table_rows_by_rms(0.8, min_dim_size_to_factor=min_dim)
  params = jax.random.normal(jax.random.key(0), shape)
  ref_state, new_state = ref.init(params), new.init(params)
  # Rows at different steps (a row's count advances only when a batch has it), and gradients
  # that grow (row 0) or shrink at different rates per row: a growing gradient's update is
  # clipped to RMS 1; a row whose second moment remembers larger gradients is not clipped.
  counts = jnp.array([0, 3, 1, 7, 2], jnp.int32)
  ref_state, new_state = with_counts(ref_state, counts), with_counts(new_state, counts)
  rates = (np.arange(shape[0]) - 1).reshape((-1,) + (1,) * (len(shape) - 1))
  for i in range(3):
    g = jax.random.normal(jax.random.key(i + 1), shape) * 10.0 ** (-i * rates)
    ref_u, ref_state = jax.jit(ref.update)(g, ref_state, params)
    new_u, new_state = jax.jit(new.update)(g, new_state, params)
    # rsqrt vs optax's x ** -0.5: at most 2 ulp per factor.
    np.testing.assert_allclose(new_u, ref_u, rtol=2e-6, atol=0)
  rms = ref_state[0]
  np.testing.assert_array_equal(new_state.count, rms.count)
  np.testing.assert_array_equal(new_state.count, counts + 3)
  if factored_dims(shape[1:], min_dim) is None:
    np.testing.assert_allclose(new_state.v, rms.v, rtol=1e-6)
  else:
    np.testing.assert_allclose(new_state.v_row, rms.v_row, rtol=1e-6)
    np.testing.assert_allclose(new_state.v_col, rms.v_col, rtol=1e-6)
  clipped = np.sqrt(np.mean(np.square(new_u), axis=tuple(range(1, len(shape)))))
  assert np.all(clipped <= 1.0 + 1e-6) and clipped[0] > 1.0 - 1e-6 and np.all(clipped[2:] < 0.5)


def test_state_holds_only_the_statistics_a_row_uses():
  unfactored = scale_table_rows_by_rms().init(jnp.zeros((512, 8, 256)))
  assert isinstance(unfactored, TableRms)
  assert [x.shape for x in unfactored] == [(512,), (512, 8, 256)]
  factored = scale_table_rows_by_rms().init(jnp.zeros((4, 128, 512)))
  assert isinstance(factored, FactoredTableRms)
  assert [x.shape for x in factored] == [(4,), (4, 128), (4, 512)]
  # optax's vmapped state carries [F, 1] placeholders for the unused statistics.
  vmapped_state = vmapped_optax(128).init(jnp.zeros((512, 8, 256)))
  placeholders = [x.shape for x in jax.tree.leaves(vmapped_state)]
  assert (512, 1) in placeholders


def test_make_optimizer_factors_table_rows_when_asked():
  from flix.training.optimizers import make_optimizer
  params = {"lora_a_lang": jnp.zeros((6, 8, 256)), "dense": jnp.zeros((256, 256))}
  factored = jax.tree.leaves(make_optimizer(table_min_dim_size_to_factor=1).init(params),
                             is_leaf=lambda x: isinstance(x, (TableRms, FactoredTableRms)))
  default = jax.tree.leaves(make_optimizer().init(params),
                            is_leaf=lambda x: isinstance(x, (TableRms, FactoredTableRms)))
  [rows] = [x for x in factored if isinstance(x, FactoredTableRms)]
  assert [x.shape for x in rows] == [(6,), (6, 8), (6, 256)]
  [full] = [x for x in default if isinstance(x, TableRms)]
  assert full.v.shape == (6, 8, 256)
  nbytes = lambda leaves: sum(x.nbytes for x in jax.tree.leaves(leaves))
  assert nbytes(rows.v_row) + nbytes(rows.v_col) == 6 * (8 + 256) * 4
  with pytest.raises(ValueError, match="per-row Adafactor only .*'adamw'"):
    make_optimizer("adamw", table_min_dim_size_to_factor=1)
