import json

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
  sp = FeatureSpace((FeatureType("task", ("inflect", "g2p")),
                     FeatureType("lang", ("tur", "dan")),
                     FeatureType("family", ("Turkic", "Germanic"), source="lang",
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
    FeatureType("shared", ("a",))
  with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
    FeatureType("task", ("a", "b", "a"))
  with pytest.raises(ValueError, match="unique"):
    FeatureSpace((FeatureType("task", ("a",)), FeatureType("task", ("b",))))
  with pytest.raises(TypeError):  # Ranks are the method's (FlixConfig), not the data's.
    FeatureSpace.build({"task": ["a"], "lang": ["en"]}, {"task": 2})


def test_ranks_must_name_exactly_the_spaces_types():
  """Issue 35's spec bug: `{"task": 16}` used to keep the language adapter at the data's rank
  (4) while the run reported rank 16. A mapping now names every type, and only those."""
  sp = tiny.space()
  with pytest.raises(ValueError, match=r"types \['task', 'lang'\] \(no rank for \['lang'\]\)"):
    FlixConfig(sp, ranks={"task": 16})
  with pytest.raises(UnknownFeatureError, match=r"unknown types \['langue'\]"):
    FlixConfig(sp, ranks={"task": 2, "lang": 2, "langue": 2})
  with pytest.raises(ValueError, match="one rank per feature type"):
    FlixConfig(sp, ranks=(4,))
  with pytest.raises(ValueError, match=r"ranks must be ints >= 1, got \{'task': 0\}"):
    FlixConfig(sp, ranks={"task": 0, "lang": 2})
  with pytest.raises(ValueError, match="shared_rank must be an int >= 0"):
    FlixConfig(sp, ranks=2, shared_rank=-1)
  with pytest.raises(ValueError, match="at least one feature type in its space or a shared"):
    FlixConfig(FeatureSpace(), ranks=())
  cfg = FlixConfig(sp, ranks={"lang": 4, "task": 16})  # Any order; stored in the space's.
  assert cfg.ranks == (16, 4) and cfg.rank("lang") == 4 and cfg.active_rank == 20
  assert FlixConfig(sp, ranks=8).ranks == (8, 8) and cfg.replace(alpha=2.0).ranks == (16, 4)
  with pytest.raises(UnknownFeatureError, match="'family'"):
    cfg.rank("family")


def test_the_methods_settings_give_the_ranks_over_the_datas_space():
  from flix.training.loop import AdapterSettings
  sp = tiny.space()
  with pytest.raises(ValueError, match=r"no rank for \['lang'\]"):  # Was: lang kept rank 2.
    AdapterSettings(feature_ranks={"task": 16}).flix_config(sp)
  flix = AdapterSettings(feature_ranks={"task": 16, "lang": 4}, shared_rank=2,
                         alpha=8.0).flix_config(sp)
  assert flix == FlixConfig(sp, ranks=(16, 4), shared_rank=2, alpha=8.0)
  assert AdapterSettings(feature_ranks=4).flix_config(sp).ranks == (4, 4)
  assert AdapterSettings(method="lora", lora_rank=16).flix_config(sp) == FlixConfig.lora(16)
  assert AdapterSettings(method="lora", lora_rank=16).flix_config(None) == FlixConfig.lora(16)
  assert AdapterSettings(method="full").flix_config(sp) is None
  with pytest.raises(ValueError, match="method 'flix' needs a data registration"):
    AdapterSettings().flix_config(None)


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
  sp = FeatureSpace.build({"task": ["número", "b"], "lang": ["en"]},
                          derived={"family": ("lang", {"en": "Germanic"})})
  assert FeatureSpace.from_json(sp.to_json()) == sp
  assert "rank" not in sp.to_json()
  cfg = FlixConfig(sp, ranks={"task": 8, "lang": 2, "family": 1}, shared_rank=4, alpha=16.0,
                   rslora=True, targets=("*.query", "encoder.mlp.*"), strategy="gather")
  assert FlixConfig.from_json(cfg.to_json()) == cfg
  assert json.loads(cfg.to_json())["ranks"] == {"task": 8, "lang": 2, "family": 1}
  assert FlixConfig.from_json(FlixConfig.lora(16).to_json()) == FlixConfig.lora(16)


# A flix.json as checkpoints saved it before ranks moved from the feature space to FlixConfig.
OLD_FLIX_JSON = """{
  "space": {
    "types": [
      {"name": "task", "values": ["cardinal", "ordinal"], "rank": 8},
      {"name": "lang", "values": ["en", "fr"], "rank": 4},
      {"name": "family", "values": ["Germanic", "Romance"], "rank": 2, "source": "lang",
       "table": {"en": "Germanic", "fr": "Romance"}}
    ],
    "shared_rank": 2
  },
  "alpha": 16.0,
  "rslora": true,
  "targets": ["*.query"],
  "strategy": "gather",
  "row_limit": 3
}"""


def test_old_flix_json_with_ranks_in_the_space_still_loads():
  cfg = FlixConfig.from_json(OLD_FLIX_JSON)
  space = FeatureSpace.build({"task": ["cardinal", "ordinal"], "lang": ["en", "fr"]},
                             derived={"family": ("lang", {"en": "Germanic", "fr": "Romance"})})
  assert cfg == FlixConfig(space, ranks={"task": 8, "lang": 4, "family": 2}, shared_rank=2,
                           alpha=16.0, rslora=True, targets=("*.query",), strategy="gather",
                           row_limit=3)
  assert FeatureSpace.from_json(json.dumps(json.loads(OLD_FLIX_JSON)["space"])) == space
  assert FlixConfig.from_json(cfg.to_json()) == cfg  # Saved again in the new format.
  lora = FlixConfig.from_json('{"space": {"types": [], "shared_rank": 16}, "alpha": null, '
                              '"rslora": false, "targets": ["*"], "strategy": "auto", '
                              '"row_limit": null}')
  assert lora == FlixConfig.lora(16)


def test_a_checkpoint_saved_with_ranks_in_its_feature_space_still_loads(tmp_path):
  from flix import checkpoints
  from flix.models.t5 import T5
  flix = tiny.flix(shared_rank=2)
  model = T5(tiny.t5_config(num_encoder_layers=1, num_decoder_layers=1), flix)
  params = tiny.random_params(model)
  path = checkpoints.save_model(str(tmp_path / "ckpt"), params, model.config, flix)
  space = {"types": [{"name": "task", "values": list(tiny.TASKS), "rank": 4},
                     {"name": "lang", "values": list(tiny.LANGS), "rank": 2}],
           "shared_rank": 2}
  old = {"space": space, "alpha": None, "rslora": False, "targets": ["*"], "strategy": "auto",
         "row_limit": None}  # FlixConfig.to_json's output before ranks moved.
  (tmp_path / "ckpt" / checkpoints.FLIX_JSON).write_text(json.dumps(old, indent=2))
  (tmp_path / "ckpt" / checkpoints.FEATURES_JSON).write_text(json.dumps(space, indent=2))
  config, loaded, restored = checkpoints.load_model(path)
  assert loaded == flix and config == model.config
  enc, dec = tiny.batch(size=2)
  ids = np.array([[0, 1], [2, INACTIVE]], np.int32)
  np.testing.assert_array_equal(tiny.apply(T5(config, loaded), restored, enc, dec, ids),
                                tiny.apply(model, params, enc, dec, ids))


def test_lora_has_only_the_shared_adapter():
  lora = FlixConfig.lora(16)
  assert lora.space.n_types == 0 and lora.ranks == () and lora.active_rank == 16
  assert tiny.flix(shared_rank=2).active_rank == 4 + 2 + 2


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
  with pytest.raises(ValueError, match=r"'\*.qkv' matches no projection of this network"):
    tiny.flix(targets=("*.qkv",)).check_targets(("encoder.attention.query",))
  with pytest.raises(ValueError, match="unknown strategy 'fast'"):
    tiny.flix(strategy="fast")
  cfg = tiny.flix(targets=("*.query", "decoder.mlp.*"))
  assert cfg.adapts("encoder.attention.query") and cfg.adapts("decoder.mlp.wo")
  assert not cfg.adapts("encoder.mlp.wo") and not cfg.adapts("decoder.self_attention.key")
  assert tiny.flix(alpha=8.0).scale(4) == 2.0
  assert tiny.flix(alpha=8.0, rslora=True).scale(4) == 4.0
  assert tiny.flix().scale(4) == 1.0
