"""Task-language pairs in seqio: feature ids in the model batch, mixture rates, hold-out."""

import collections
import uuid

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flix.data import converter, pairs, vocab
from flix.data.pairs import HoldOut, Pair
from flix.errors import UnknownFeatureError
from flix.features import INACTIVE, FeatureSpace


def unique_prefix(stem: str) -> str:
  return f"t_{stem}_{uuid.uuid4().hex[:8]}"

LENGTHS = {"inputs": 16, "targets": 8}
SPACE = FeatureSpace.build({"task": ["copy", "upper"], "lang": ["en", "fr", "de"]})


def _examples(pair: Pair, n_train: int, n_eval: int = 4):
  def row(split, i):
    return {"inputs": f"{pair.task}|{pair.lang}|{split[0]}{i}", "targets": f"{pair.lang}{i}"}
  return {"train": [row("train", i) for i in range(n_train)],
          "validation": [row("validation", i) for i in range(n_eval)],
          "test": [row("test", i) for i in range(n_eval)]}


@pytest.fixture
def registry():
  names = []
  yield names
  pairs.unregister(names)


def _register(registry, prefix, specs, holdout=None, space=SPACE):
  tasks = []
  for pair, n in specs:
    t = pairs.register_pair_task(pair.task_name(prefix), pair, _examples(pair, n), space, holdout)
    registry.append(t.name)
    tasks.append(t)
  return tasks


def _origin(batch, i):
  task, lang, _ = vocab.BYTE_VOCAB.decode(batch["encoder_input_tokens"][i].tolist()).split("|")
  return Pair(task, lang)


def test_feature_ids_in_model_batch_match_each_examples_pair(registry):
  prefix = unique_prefix("ids")
  holdout = HoldOut(unseen_pairs={Pair("upper", "fr")}, unseen_langs={"pt"})
  specs = [(Pair(t, l), 20) for t in ("copy", "upper") for l in ("en", "fr", "de", "pt")]
  tasks = _register(registry, prefix, specs, holdout, FeatureSpace.build(
      {"task": ["copy", "upper"], "lang": ["en", "fr", "de"]}))
  space = FeatureSpace.build({"task": ["copy", "upper"], "lang": ["en", "fr", "de"]})
  registry.append(f"{prefix}.eval")
  pairs.register_pair_mixture(f"{prefix}.eval", tasks, include_untrained=True)
  conv = converter.FlixEncDecFeatureConverter(space.n_types)
  ds = seqio.get_dataset(f"{prefix}.eval", LENGTHS, conv, dataset_split="validation",
                         shuffle=True, seed=3, num_epochs=None).batch(16)
  seen = collections.Counter()
  for batch in ds.take(12).as_numpy_iterator():
    assert batch["feature_ids"].shape == (16, 2) and batch["feature_ids"].dtype == np.int32
    for i in range(16):
      pair = _origin(batch, i)
      expected = [space.type("task").values.index(pair.task),
                  INACTIVE if pair.lang == "pt" else space.type("lang").values.index(pair.lang)]
      assert batch["feature_ids"][i].tolist() == expected, pair
      seen[pair] += 1
  assert len(seen) == 8  # Every pair, including the unseen pair and the unseen language.
  assert batch["encoder_input_tokens"].shape == (16, 16)
  assert batch["decoder_target_tokens"].shape == (16, 8)
  # Teacher forcing: decoder inputs are the targets shifted right by one, starting at 0.
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                (batch["decoder_target_tokens"] != 0).astype(np.int32))


@pytest.mark.parametrize("rate,temperature,expected", [
    ("equal", 1.0, [1 / 3, 1 / 3, 1 / 3]),
    ("examples", 1.0, [1 / 14, 4 / 14, 9 / 14]),
    ("temperature", 2.0, [1 / 6, 2 / 6, 3 / 6]),
])
def test_mixture_rates_give_the_configured_sampling_proportions(registry, rate, temperature,
                                                                  expected):
  prefix = unique_prefix(f"rate_{rate}")
  tasks = _register(registry, prefix, [(Pair("copy", "en"), 100), (Pair("copy", "fr"), 400),
                                       (Pair("copy", "de"), 900)])
  registry.append(f"{prefix}.mix")
  pairs.register_pair_mixture(f"{prefix}.mix", tasks, rate=rate, temperature=temperature)
  predicted = pairs.expected_rates(tasks, rate, temperature)
  np.testing.assert_allclose([predicted[t.name] for t in tasks], expected, rtol=1e-6)
  conv = converter.FlixEncDecFeatureConverter(SPACE.n_types)
  ds = seqio.get_dataset(f"{prefix}.mix", LENGTHS, conv, dataset_split="train", shuffle=True,
                         seed=0, num_epochs=None).batch(500)
  lang_ids = np.concatenate([b["feature_ids"][:, 1] for b in ds.take(8).as_numpy_iterator()])
  freq = np.bincount(lang_ids, minlength=3) / lang_ids.size  # lang ids: en 0, fr 1, de 2.
  np.testing.assert_allclose(freq, expected, atol=0.03)


def test_mixture_sampling_is_deterministic_for_a_seed(registry):
  prefix = unique_prefix("det")
  tasks = _register(registry, prefix, [(Pair("copy", "en"), 30), (Pair("upper", "fr"), 30)])
  registry.append(f"{prefix}.mix")
  pairs.register_pair_mixture(f"{prefix}.mix", tasks)
  conv = converter.FlixEncDecFeatureConverter(SPACE.n_types)

  def first_batch():
    ds = seqio.get_dataset(f"{prefix}.mix", LENGTHS, conv, dataset_split="train", shuffle=True,
                           seed=7, num_epochs=None).batch(32)
    return next(ds.as_numpy_iterator())
  a, b = first_batch(), first_batch()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_held_out_pairs_never_appear_in_training(registry):
  prefix = unique_prefix("hold")
  holdout = HoldOut(unseen_pairs={Pair("upper", "fr")}, unseen_langs={"de"})
  space = FeatureSpace.build({"task": ["copy", "upper"], "lang": ["en", "fr"]})
  specs = [(Pair(t, l), 25) for t in ("copy", "upper") for l in ("en", "fr", "de")]
  tasks = _register(registry, prefix, specs, holdout, space)
  kinds = {t.pair: t.kind for t in tasks}
  assert kinds[Pair("upper", "fr")] == "unseen_pair"
  assert kinds[Pair("copy", "de")] == kinds[Pair("upper", "de")] == "unseen_language"
  assert sum(k == "seen_pair" for k in kinds.values()) == 3
  for t in tasks:  # Untrained pairs have no train split at all.
    assert ("train" in t.task.splits) == (t.kind == "seen_pair"), t.name
    with_train = "train" in t.num_examples
    assert with_train == t.trained
  registry.append(f"{prefix}.train")
  members = pairs.register_pair_mixture(f"{prefix}.train", tasks, rate="examples")
  assert sorted(t.pair for t in members) == [Pair("copy", "en"), Pair("copy", "fr"),
                                             Pair("upper", "en")]
  conv = converter.FlixEncDecFeatureConverter(space.n_types)
  ds = seqio.get_dataset(f"{prefix}.train", LENGTHS, conv, dataset_split="train", shuffle=True,
                         seed=1, num_epochs=None).batch(75)
  origins = collections.Counter()
  for batch in ds.take(4).as_numpy_iterator():
    for i in range(75):
      origins[_origin(batch, i)] += 1
  assert set(origins) == {Pair("copy", "en"), Pair("copy", "fr"), Pair("upper", "en")}
  with pytest.raises(ValueError, match="not available"):
    next(seqio.get_mixture_or_task(f"{prefix}.upper.fr").get_dataset(
        LENGTHS, split="train").as_numpy_iterator())


def test_converter_rejects_a_feature_ids_length_other_than_n_types(registry):
  prefix = unique_prefix("len")
  _register(registry, prefix, [(Pair("copy", "en"), 4)])
  conv = converter.FlixEncDecFeatureConverter(SPACE.n_types)
  with pytest.raises(ValueError, match=r"task_feature_lengths\['feature_ids'\] is 5, expected "
                     r"n_types=2"):
    seqio.get_dataset(f"{prefix}.copy.en", {**LENGTHS, "feature_ids": 5}, conv)
  wrong = converter.FlixEncDecFeatureConverter(3)  # A converter for another space.
  with pytest.raises(Exception, match="wrong number of ids"):
    next(seqio.get_dataset(f"{prefix}.copy.en", LENGTHS, wrong).as_numpy_iterator())


def test_data_n_types_reads_the_length_of_the_feature_ids(registry):
  prefix = unique_prefix("n")
  tasks = _register(registry, prefix, [(Pair("copy", "en"), 4), (Pair("upper", "fr"), 4)])
  registry.append(f"{prefix}.train")
  pairs.register_pair_mixture(f"{prefix}.train", tasks)
  assert converter.data_n_types(tasks[0].name) == SPACE.n_types == 2
  assert converter.data_n_types(f"{prefix}.train") == 2  # A mixture's first task's.
  task = seqio.get_mixture_or_task(tasks[1].name)
  assert converter.data_n_types(task, split="validation") == 2
  plain = seqio.TaskRegistry.add(  # A user's task without feature ids (LoRA or full runs).
      f"{prefix}.plain", source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors(
              {"inputs": [5], "targets": [6]}), splits=["train"]),
      output_features={k: seqio.Feature(vocab.BYTE_VOCAB) for k in ("inputs", "targets")})
  registry.append(plain.name)
  assert converter.data_n_types(plain.name) == 0
  with pytest.raises(ValueError, match=r"unknown mixture or task 'nope'"):
    converter.data_n_types("nope")


def test_encode_pair_drops_only_unseen_languages():
  space = FeatureSpace.build({"task": ["copy"], "lang": ["en"]})
  holdout = HoldOut(unseen_langs={"sw"})
  assert pairs.encode_pair(space, Pair("copy", "sw"), holdout).tolist() == [0, INACTIVE]
  with pytest.raises(UnknownFeatureError, match="'fr'"):
    pairs.encode_pair(space, Pair("copy", "fr"), holdout)
  with pytest.raises(UnknownFeatureError, match="'other'"):
    pairs.encode_pair(space, Pair("other", "sw"), holdout)
  task_only = FeatureSpace.build({"task": ["copy"]})
  assert pairs.encode_pair(task_only, Pair("copy", "fr")).tolist() == [0]


def test_mixture_of_only_untrained_pairs_is_refused(registry):
  prefix = unique_prefix("empty")
  tasks = _register(registry, prefix, [(Pair("copy", "fr"), 5)],
                    HoldOut(unseen_pairs={Pair("copy", "fr")}))
  with pytest.raises(ValueError, match="would be empty"):
    pairs.register_pair_mixture(f"{prefix}.mix", tasks)
  with pytest.raises(ValueError, match="mixing rate kind 'loud' unknown"):
    pairs.mixing_rate("loud")


GRID = [Pair(t, l) for t in ("a", "b", "c", "d") for l in ("x", "y", "z", "w", "v")
        if (t, l) != ("d", "v")]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_holdout_keeps_every_task_and_language_trained_twice(seed):
  h = pairs.random_holdout(GRID, n_pairs=5, seed=seed, unseen_langs=("w",))
  assert len(h.unseen_pairs) == 5 and h.unseen_langs == {"w"}
  assert all(p in GRID and p.lang != "w" for p in h.unseen_pairs)
  trained = [p for p in GRID if h.is_trained(p)]
  assert min(collections.Counter(p.task for p in trained).values()) >= 2
  assert min(collections.Counter(p.lang for p in trained).values()) >= 2
  assert pairs.random_holdout(GRID, 5, seed, ("w",)) == h  # Deterministic in the seed.


def test_random_holdout_draws_differ_by_seed_and_stop_when_nothing_more_fits():
  draws = {pairs.random_holdout(GRID, 5, seed).unseen_pairs for seed in range(6)}
  assert len(draws) >= 5
  small = [Pair(t, l) for t in ("a", "b") for l in ("x", "y", "z")]
  # 2 tasks x 3 languages: each language has 2 cells, so no pair can go.
  with pytest.raises(ValueError, match="no pair can be held out"):
    pairs.random_holdout(small, 1, 0)
  h = pairs.make_holdout("random", ("a", "b", "c", "d"), ("x", "y", "z", "w", "v"), GRID,
                         seed=0, n_pairs=50)
  assert 0 < len(h.unseen_pairs) < 50  # As many as fit.


def test_explicit_and_bad_holdout_schemes():
  tasks, langs = ("a", "b", "c", "d"), ("x", "y", "z", "w", "v")
  h = pairs.make_holdout("explicit", tasks, langs, GRID, unseen_pairs=[Pair("a", "x")])
  assert h.unseen_pairs == {Pair("a", "x")} and h.scheme == "explicit"
  with pytest.raises(ValueError, match=r"unseen pairs \['d.v'\] are not cells of the grid"):
    pairs.make_holdout("explicit", tasks, langs, GRID, unseen_pairs=[Pair("d", "v")])
  with pytest.raises(ValueError, match="use 'explicit'"):
    pairs.make_holdout("random", tasks, langs, GRID, unseen_pairs=[Pair("a", "x")])
  with pytest.raises(ValueError, match=r"unseen languages \['q'\] are not languages"):
    pairs.make_holdout("none", tasks, langs, GRID, unseen_langs=("q",))
  with pytest.raises(ValueError, match="scheme 'zigzag' unknown"):
    pairs.make_holdout("zigzag", tasks, langs, GRID)


def test_variants_are_tasks_of_their_own_with_the_cells_features_and_hold_out():
  from flix.data.aggregation import aggregate, as_pair
  back, forth = Pair("translit", "hi", "Deva2Latn"), Pair("translit", "hi", "Latn2Deva")
  assert back.task_name("p.q") == "p.q.translit.hi:Deva2Latn"
  assert back.key == "translit.hi:Deva2Latn"
  assert as_pair("p.q.translit.hi:Deva2Latn") == back and as_pair("p.copy.en") == Pair("copy", "en")
  assert back.features == {"task": "translit", "lang": "hi"} and back.cell == Pair("translit", "hi")
  assert back != forth and back.cell == forth.cell
  holdout = HoldOut(unseen_pairs={Pair("translit", "hi")})
  assert holdout.kind(back) == holdout.kind(forth) == "unseen_pair"
  with pytest.raises(ValueError, match=r"unseen pairs \['translit.hi:Deva2Latn'\] name variants"):
    HoldOut(unseen_pairs={back})
  with pytest.raises(ValueError, match="pair variant must be"):
    Pair("translit", "hi", "Deva-Latn")
  groups = aggregate({"p.translit.hi:Deva2Latn": {"cer": 10.0}, "p.translit.hi:Latn2Deva":
                      {"cer": 30.0}, "p.copy.hi": {"cer": 50.0}})
  assert groups["by_task"]["translit"] == {"cer": 20.0, "n_pairs": 2}  # Averaged over directions.
  assert groups["by_lang"]["hi"] == {"cer": 30.0, "n_pairs": 3}
