"""experiments.study's issue-35 design: distinct validation and test held-out cells (offline2,
morph2), the archive's keys unchanged for runs 1-12, the new methods and their data."""

import collections
import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from experiments.study import grids, holdouts, methods, runs
from flix.data import offline
from flix.data.pairs import PAIR_FEATURE, HoldOut, Pair, encode_pair
from flix.features import INACTIVE, FeatureSpace

ARCHIVE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "study", "archive")


def _grid(name):
  if name == "offline":
    return grids.offline_grid()
  if name == "offline2":
    return grids.offline2_grid()
  # morph_grid without its release files (the key leaves out where they are).
  return grids.MorphGrid("morph", grids.SMALL_T5, grids.Budget(eval_examples=64),
                         unseen_pairs=6, unseen_langs=2)


def test_every_archived_run_keeps_its_key():
  """Runs 1-12 (offline, morph) and offline2's: the current code computes each one's key."""
  paths = sorted(glob.glob(os.path.join(ARCHIVE, "*", "*.json")))
  assert len(paths) >= 60
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    key = record["key"]
    grid = _grid(key["grid"]["name"])
    grid = dataclasses.replace(grid, budget=grids.Budget(**key["grid"]["budget"]))
    spec = methods.method(record["method"])
    assert json.loads(json.dumps(runs.run_key(grid, spec, record["seed"]))) == key, path
    assert os.path.basename(path) == runs.run_name(grid, spec, record["seed"]) + ".json"


def test_new_fields_enter_a_key_only_when_they_differ_from_runs_1_to_12():
  assert set(methods.method("flix").key()) == {"name", "method", "feature_ranks", "shared_rank",
                                               "feature_dropout", "derived"}
  assert methods.method("lora_fs").key()["inputs"] == "family_script"
  assert methods.method("pair").key()["features"] == ("pair",)
  assert methods.method("lora_r59").key()["rank_exempt"] is True
  assert "design" not in grids.offline_grid().key()
  assert grids.offline2_grid().key()["design"]["min_coverage"] == 0.85
  assert runs.base_key(grids.offline2_grid()).keys() == runs.base_key(grids.offline_grid()).keys()


def test_lora_ranks_and_the_parameter_matched_lora():
  r59 = methods.method("lora_r59")
  assert r59.shared_rank == 59 and r59.rank_exempt and "exempt" in r59.label
  assert not methods.method("lora_r16").rank_exempt
  methods.check_budget([methods.method("lora"), r59, methods.method("flix_task"),
                        methods.method("pair_shared"), methods.method("lora_fs")])
  with pytest.raises(ValueError, match=r"unknown method 'lora_r0'.*lora_r\{N\}"):
    methods.method("lora_r0")
  # FLix derived's trained values in rank units: shared 8 + task 4 x 6 + lang 2 x 10 seen
  # languages + family 1 x 6 + script 1 x 1 = 59 on offline2; 65 on the first offline grid
  # (trained_params 1,347,840 = 65 x 20,736 in its archive).
  for grid, seed, rank in ((grids.offline2_grid(), 3, 59), (grids.offline_grid(), 0, 65)):
    data = offline.generate(grid.config(seed))
    assert methods.matched_lora_rank(data.feature_space(derived=("family", "script"))) == rank
  with open(sorted(glob.glob(os.path.join(ARCHIVE, "offline", "flix_derived_p0.0_s0_*")))[0]) as f:
    assert json.load(f)["trained_params"] == 65 * 331_776 // 16


def test_offline2_draws_distinct_validation_and_test_cells_whose_words_are_trained():
  grid = grids.offline2_grid()
  data = offline.generate(grid.offline)
  assert "country" not in grid.offline.tasks and len(data.pairs) == 70
  coverage = holdouts.coverages(data.examples)
  draws = collections.Counter()
  for seed in range(13):
    split = grid.split_holdout(seed)
    val, test = split.splits["validation"], split.splits["test"]
    assert not set(val["unseen_pairs"]) & set(test["unseen_pairs"])
    assert len(val["unseen_langs"]) == len(test["unseen_langs"]) == 1
    assert not set(val["unseen_langs"]) & set(test["unseen_langs"])
    for cells in (val, test):
      assert sorted(p.task for p in cells["unseen_pairs"]) == sorted(grid.design.pair_tasks)
    pairs = split.holdout.unseen_pairs
    assert len({p.lang for p in pairs}) == len(pairs) == 10  # One per seen language.
    assert all(coverage[p] >= 0.85 for p in pairs)
    trained = [p for p in data.pairs if split.holdout.is_trained(p)]
    for task in grid.offline.tasks:  # Every task trained in >= 6 languages.
      assert sum(p.task == task for p in trained) >= 6, (seed, task)
    for lang in set(grid.langs) - split.holdout.unseen_langs:
      assert sum(p.lang == lang for p in trained) >= 4, (seed, lang)
    for pair in data.pairs:  # Each held-out cell is evaluated on one split only.
      both = [split.evaluated(s, pair) for s in holdouts.SPLITS]
      assert all(both) if split.holdout.is_trained(pair) else sum(both) == 1
    assert grid.split_holdout(seed) == split  # Deterministic.
    draws.update(pairs)
  assert len(draws) > 25  # The seeds draw different cells.
  # 200 validation and 200 test examples in every held-out cell of the confirmatory seeds (a
  # hold-out does not change the examples: the grid's are every seed's).
  for seed in range(3, 13):
    holdout = grid.split_holdout(seed).holdout
    for pair in data.pairs:
      if not holdout.is_trained(pair):
        assert len(data.examples[pair]["validation"]) == 200
        assert len(data.examples[pair]["test"]) == 200
  assert offline.generate(grid.config(3)).holdout.unseen_pairs == grid.split_holdout(
      3).holdout.unseen_pairs


def test_the_draw_is_the_same_in_every_process_and_part_of_the_run_key():
  # Python salts str hashes per process: a draw that iterated a set of task names drew other
  # cells in another process, while its runs' keys stayed the same.
  code = ("from experiments.study import grids; import json; "
          "print(json.dumps([grids.offline2_grid().split_holdout(s).to_dict() for s in (0, 3)]))")
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  # One other process, with a hash seed other than this one's (random, or the user's).
  seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
  output = subprocess.run([sys.executable, "-c", code], cwd=root, check=True, text=True,
                          capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}
                          ).stdout.strip().splitlines()[-1]
  grid = grids.offline2_grid()
  assert json.loads(output) == [grid.split_holdout(s).to_dict() for s in (0, 3)]
  key = runs.run_key(grid, methods.method("lora"), 3)
  assert key["holdout"] == grid.split_holdout(3).to_dict()
  assert "holdout" not in runs.run_key(grids.offline_grid(), methods.method("lora"), 3)


def test_coverage_counts_the_cells_letters_found_in_the_languages_other_trained_cells():
  ex = lambda *targets: [{"inputs": "x", "targets": t} for t in targets]
  examples = {Pair("a", "xx"): {"train": ex("abcdef"), "test": ex("abcde")},
              Pair("b", "xx"): {"train": ex("zzzz"), "test": ex("abcdzzzz", "1.5")},
              Pair("c", "xx"): {"train": ex(), "test": ex("12,5")},
              Pair("a", "yy"): {"train": ex("abcdzzzz"), "test": ex("q")}}
  assert holdouts.coverage(examples, Pair("a", "xx")) == 0.0  # "zzzz" only; other lang ignored
  # abcd, bcdz, cdzz, dzzz, zzzz: only abcd is in the language's other cells (its own "zzzz"
  # does not count).
  assert holdouts.coverage(examples, Pair("b", "xx")) == pytest.approx(1 / 5)
  assert holdouts.coverage(examples, Pair("c", "xx")) == 1.0  # No letters.


def test_a_design_that_cannot_be_met_is_refused():
  present = [Pair(t, l) for t in ("a", "b") for l in ("en", "de", "nl")]
  with pytest.raises(ValueError, match="no hold-out satisfies"):
    holdouts.draw(holdouts.SplitDesign(pair_tasks=("a", "a")), ("en", "de", "nl"), present, 0)
  with pytest.raises(ValueError, match=r"pair_tasks \['q'\] have no cell"):
    holdouts.draw(holdouts.SplitDesign(pair_tasks=("q",)), ("en", "de"), present, 0)


def test_the_pair_feature_gives_each_trained_cell_an_adapter_and_unseen_cells_none():
  holdout = HoldOut(frozenset({Pair("b", "en")}), frozenset({"fr"}))
  space = FeatureSpace.build({"pair": ["a.en", "a.de", "b.de"]})
  assert encode_pair(space, Pair("a", "de"), holdout).tolist() == [1]
  assert encode_pair(space, Pair("b", "en"), holdout).tolist() == [INACTIVE]  # Unseen pair.
  assert encode_pair(space, Pair("a", "fr"), holdout).tolist() == [INACTIVE]  # Unseen lang.
  with pytest.raises(Exception, match="unknown value 'c.de'"):
    encode_pair(space, Pair("c", "de"), holdout)  # A trained cell the space lacks: an error.
  both = FeatureSpace.build({"task": ["a", "b"], "lang": ["en", "de"]})
  assert encode_pair(both, Pair("b", "de"), holdout).tolist() == [1, 1]  # Unchanged.
  assert PAIR_FEATURE == "pair"


def test_each_method_gets_the_space_and_inputs_it_names():
  grid = grids.offline2_grid(quick=True)
  split = grid.split_holdout(0)
  for name, types in (("flix_task", ["task"]), ("flix_lang", ["lang"]), ("pair", ["pair"]),
                      ("pair_shared", ["pair"]), ("flix_derived_p0.0",
                                                  ["task", "lang", "family", "script"])):
    spec = methods.method(name)
    reg = grid.register(0, spec.derived, spec.features, spec.inputs)
    assert list(reg.space.names) == types, name
    if name == "pair":
      trained = sorted(t.pair.key for t in reg.tasks if t.trained)
      assert sorted(reg.space.type("pair").values) == trained
      assert (reg.holdout.unseen_pairs, reg.holdout.unseen_langs) == (
          split.holdout.unseen_pairs, split.holdout.unseen_langs)
  plain = grid.register(0)
  informed = grid.register(0, inputs="family_script")
  first = lambda reg: reg.data.examples[Pair("cardinal", "en")]["train"][0]
  assert first(plain)["inputs"].startswith("cardinal en: ")
  assert first(informed)["inputs"].startswith("cardinal en Germanic Latin: ")
  assert first(plain)["targets"] == first(informed)["targets"]
  with pytest.raises(ValueError, match="derived from 'lang'"):
    grid.register(0, ("family",), ("task",))


def test_the_eval_parts_keep_each_splits_held_out_cells_to_that_split():
  grid = grids.offline2_grid(quick=True)
  reg = grid.register(0)
  split = grid.split_holdout(0)
  parts = {s: runs._eval_parts(grid, reg, split, s) for s in holdouts.SPLITS}
  for s in holdouts.SPLITS:
    seen, n_seen = parts[s]["seen"]
    held, n_held = parts[s]["heldout"]
    assert n_seen == grid.budget.eval_examples and n_held == grid.design.heldout_examples
    assert len(held) == 1 + 2  # One unseen pair, one unseen language's two cells.
    assert all(reg.holdout.is_trained(t.pair) == (t.name in seen) for t in reg.tasks
               if t.name in seen + held)
  assert not set(parts["validation"]["heldout"][0]) & set(parts["test"]["heldout"][0])
  assert parts["validation"]["seen"] == parts["test"]["seen"]
  first = grids.offline_grid(quick=True)
  assert runs._eval_parts(first, first.register(0), None, "test") == {
      "all": (first.register(0).eval_mixture, None)}


def test_morph2_holds_out_inflection_only():
  langs = ("bel", "dan", "deu", "eng", "fin", "fra", "hun", "hye", "ita", "kat", "mkd", "spa",
           "tur")
  present = [Pair(t, l) for t in ("inflect", "analyze", "g2p") for l in langs]
  for seed in range(3, 13):
    split = holdouts.draw(grids.MORPH2_DESIGN, langs, present, seed)
    assert {p.task for p in split.holdout.unseen_pairs} == {"inflect"}
    assert len(split.holdout.unseen_pairs) == 4 and len(split.holdout.unseen_langs) == 2
    assert len({p.lang for p in split.holdout.unseen_pairs}) == 4
  assert grids.MORPH2_DESIGN.heldout_examples == 200


def test_the_baseline_is_added_unless_none_and_levers_reach_every_grid():
  from experiments.study import cli
  args = cli.parse_args(["--out", "x", "--methods", "flix_derived_p0.0", "--baseline", "none",
                         "--grids", "offline2", "--finetune_learning_rate", "3e-3"])
  assert [s.name for s in args.specs] == ["flix_derived_p0.0"]
  assert [g.budget.finetune_learning_rate for g in cli.grids(args)] == [3e-3]
  args = cli.parse_args(["--out", "x", "--methods", "flix", "--baseline", "lora_r59"])
  assert [s.name for s in args.specs] == ["lora_r59", "flix"]
  assert cli.parse_args(["--out", "x", "--quick"]).grids == ["offline2"]
