import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flix.config import FlixConfig
from flix.errors import UnknownFeatureError
from flix.features import INACTIVE, FeatureSpace, FeatureType, feature_dropout, parse_features
import tiny


def test_encode_maps_values_to_ids_in_type_order():
  sp = tiny.space()
  np.testing.assert_array_equal(sp.encode({"lang": "fr", "task": "currency"}), [2, 1])
  np.testing.assert_array_equal(
      sp.encode_batch([{"task": "cardinal", "lang": "fi"}, {"task": "ordinal", "lang": "en"}]),
      [[0, 3], [1, 0]])
  assert sp.decode([2, 1]) == {"task": "currency", "lang": "fr"}
  assert sp.decode([2, INACTIVE]) == {"task": "currency"}


def test_unknown_value_error_names_value_and_known_values():
  with pytest.raises(UnknownFeatureError, match=r"'sw'.*'lang'.*\['en', 'fr', 'de', 'fi'\]"):
    tiny.space().encode({"task": "ordinal", "lang": "sw"})


def test_unknown_value_drop_policy_makes_type_inactive():
  ids = tiny.space().encode({"task": "ordinal", "lang": "sw"}, unknown="drop")
  np.testing.assert_array_equal(ids, [1, INACTIVE])


def test_unknown_type_and_missing_type():
  sp = tiny.space()
  with pytest.raises(UnknownFeatureError, match="'script'"):
    sp.encode({"task": "ordinal", "lang": "en", "script": "Latn"}, unknown="drop")
  with pytest.raises(UnknownFeatureError, match="no value for feature type 'lang'"):
    sp.encode({"task": "ordinal"})
  np.testing.assert_array_equal(sp.encode({"task": "ordinal"}, unknown="drop"), [1, INACTIVE])
  with pytest.raises(ValueError, match="unknown policy 'skip'"):
    sp.encode({"task": "ordinal", "lang": "en"}, unknown="skip")


def test_a_partial_combination_derives_and_leaves_the_rest_inactive():
  """What `flix.convert --features task=X,lang=Y` exports: named types, their derived types."""
  sp = FeatureSpace((FeatureType("task", ("inflect", "g2p"), 4),
                     FeatureType("lang", ("tur", "dan"), 4),
                     FeatureType("family", ("Turkic", "Germanic"), 2, source="lang",
                                 table={"tur": "Turkic", "dan": "Germanic"})))
  np.testing.assert_array_equal(sp.encode(parse_features("lang=dan"), partial=True),
                                [INACTIVE, 1, 1])
  np.testing.assert_array_equal(sp.encode(parse_features(" task=g2p , lang=tur "), partial=True),
                                [1, 0, 0])
  with pytest.raises(UnknownFeatureError, match="'fin'.*'lang'"):
    sp.encode({"lang": "fin"}, partial=True)
  with pytest.raises(UnknownFeatureError, match="no value for feature type 'task'"):
    sp.encode({"lang": "dan"})
  with pytest.raises(ValueError, match="expected TYPE=VALUE items.*'dan'"):
    parse_features("task=g2p,dan")
  with pytest.raises(ValueError, match="'task' given twice"):
    parse_features("task=g2p,task=inflect")


def test_invalid_spaces_are_refused():
  with pytest.raises(ValueError, match="reserved"):
    FeatureType("shared", ("a",), 2)
  with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
    FeatureType("task", ("a", "b", "a"), 2)
  with pytest.raises(ValueError, match="rank >= 1"):
    FeatureType("task", ("a",), 0)
  with pytest.raises(ValueError, match="unique"):
    FeatureSpace((FeatureType("task", ("a",), 2), FeatureType("task", ("b",), 2)))
  with pytest.raises(ValueError, match="no rank given"):
    FeatureSpace.build({"task": ["a"], "lang": ["en"]}, {"task": 2})


def test_check_ids_names_bad_id_and_range():
  sp = tiny.space()
  with pytest.raises(ValueError, match=r"feature id 3 for type 'task' \(example 1\).*-1 .* 0\.\.2"):
    sp.check_ids([[0, 0], [3, 1]])
  with pytest.raises(ValueError, match=r"feature id -2"):
    sp.check_ids([[-2, 0]])
  with pytest.raises(ValueError, match=r"shape \[batch, 2\].*\(2,\)"):
    sp.check_ids([0, 1])
  sp.check_ids([[2, 3], [-1, -1]])  # In range: no error.


def test_json_round_trip():
  sp = FeatureSpace.build({"task": ["número", "b"], "lang": ["en"]}, {"task": 8, "lang": 2}, 4)
  assert FeatureSpace.from_json(sp.to_json()) == sp
  cfg = FlixConfig(sp, alpha=16.0, rslora=True, targets=("*.query", "encoder.mlp.*"),
                   strategy="gather")
  assert FlixConfig.from_json(cfg.to_json()) == cfg


def test_lora_space_has_only_shared():
  sp = FeatureSpace.lora(16)
  assert sp.n_types == 0 and sp.active_rank == 16
  assert tiny.space(shared_rank=2).active_rank == 4 + 2 + 2


def test_feature_dropout_rates_independence_and_determinism():
  ids = jnp.asarray(np.tile([[1, 2]], (20000, 1)), jnp.int32)
  key = jax.random.key(7)
  np.testing.assert_array_equal(feature_dropout(ids, key, 0.0), ids)
  a, b = feature_dropout(ids, key, 0.3), feature_dropout(ids, key, 0.3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, feature_dropout(ids, jax.random.key(8), 0.3))
  dropped = np.asarray(a == INACTIVE)
  # 20000 Bernoulli(0.3) draws per type: sd ~0.0032; P(both) = 0.09 has sd ~0.002.
  assert abs(dropped[:, 0].mean() - 0.3) < 0.015 and abs(dropped[:, 1].mean() - 0.3) < 0.015
  assert abs(np.mean(dropped[:, 0] & dropped[:, 1]) - 0.09) < 0.01  # Independent types.
  # A kept id stays in its own column with its own value.
  np.testing.assert_array_equal(np.asarray(a)[:, 0][~dropped[:, 0]], 1)
  np.testing.assert_array_equal(np.asarray(a)[:, 1][~dropped[:, 1]], 2)
  for rate in (1.0, 1.5, -0.1, "0.3"):
    with pytest.raises(ValueError, match="feature dropout rate must be a number in"):
      feature_dropout(ids, key, rate)


def test_config_targets_and_strategy_validation():
  sp = tiny.space()
  with pytest.raises(ValueError, match=r"'\*.qkv' matches no projection of this network"):
    FlixConfig(sp, targets=("*.qkv",)).check_targets(("encoder.attention.query",))
  with pytest.raises(ValueError, match="unknown strategy 'fast'"):
    FlixConfig(sp, strategy="fast")
  cfg = FlixConfig(sp, targets=("*.query", "decoder.mlp.*"))
  assert cfg.adapts("encoder.attention.query") and cfg.adapts("decoder.mlp.wo")
  assert not cfg.adapts("encoder.mlp.wo") and not cfg.adapts("decoder.self_attention.key")
  assert FlixConfig(sp, alpha=8.0).scale(4) == 2.0
  assert FlixConfig(sp, alpha=8.0, rslora=True).scale(4) == 4.0
  assert FlixConfig(sp).scale(4) == 1.0
