"""experiments.study.stats and .confirm: the statistics on synthetic data with known answers, and
the confirmatory study.json built from an archive."""

import json
import os

import numpy as np
import pytest

from experiments.study import confirm, grids, methods, runs, stats


@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_difference_of_one_sign_in_every_seed_has_the_smallest_sign_flip_p(n):
  rng = np.random.default_rng(n)
  per_seed = rng.uniform(0.01, 0.2, n)  # Positive in every seed, of any size.
  assert stats.sign_flip_p(per_seed, "greater") == pytest.approx(1 / 2 ** n)
  assert stats.sign_flip_p(per_seed) == pytest.approx(2 / 2 ** n)
  assert stats.sign_flip_p(-per_seed, "less") == pytest.approx(1 / 2 ** n)
  assert stats.sign_flip_p(per_seed, "less") == pytest.approx(1.0)
  assert stats.sign_flip_p(np.zeros(n)) == 1.0


def test_sign_flip_p_is_scipys_exact_paired_permutation_test():
  from scipy import stats as scipy_stats
  d = np.array([0.3, -0.1, 0.2, 0.05, -0.02, 0.1])
  for alternative in ("two-sided", "greater", "less"):
    expected = scipy_stats.permutation_test(
        (d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples", vectorized=True, n_resamples=np.inf,
        alternative=alternative).pvalue
    assert stats.sign_flip_p(d, alternative) == pytest.approx(expected)
  assert stats.sign_flip_p([0.2]) == 1.0 and stats.sign_flip_p([0.2], "greater") == 0.5


def test_sign_flip_p_is_uniform_under_no_effect():
  rng = np.random.default_rng(0)
  p = np.array([stats.sign_flip_p(rng.normal(0, 1, 10)) for _ in range(300)])
  assert 0.45 < p.mean() < 0.55
  assert np.mean(p <= 0.05) < 0.09 and np.mean(p <= 0.5) == pytest.approx(0.5, abs=0.08)


def test_holm_adjusts_a_family_step_down():
  assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
      {"a": 0.03, "c": 0.06, "b": 0.06})
  assert stats.holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}
  assert stats.holm({"only": 0.02}) == {"only": 0.02}


def test_the_bootstrap_resamples_cells_not_only_seeds_and_examples():
  # Three seeds alike: one cell of four carries the whole difference (+1 on every example).
  # Seeds and examples alone cannot move it (every replicate is 0.25); cells can.
  seed = [np.ones(50), np.zeros(50), np.zeros(50), np.zeros(50)]
  boot = stats.hierarchical_bootstrap([seed] * 3, n_boot=2000)
  lo, hi = stats.interval(boot)
  assert lo < 0.1 and hi > 0.4 and np.mean(boot) == pytest.approx(0.25, abs=0.02)
  # Identical cells: nothing to resample; a constant difference is its own interval.
  assert stats.interval(stats.hierarchical_bootstrap([[np.full(20, 0.5)] * 3] * 4, 300)) == [
      0.5, 0.5]


def _simulated(rng, truth, seeds=6, cells=5, n=60, seed_sd=0.03, cell_sd=0.1):
  """Correctness drawn from a three-level model whose mean exact match is `truth`."""
  out = []
  for _ in range(seeds):
    seed_mean = truth + rng.normal(0, seed_sd)
    rates = np.clip(seed_mean + rng.normal(0, cell_sd, cells), 0, 1)
    out.append([(rng.random(n) < r).astype(float) for r in rates])
  return out


def test_the_hierarchical_interval_covers_the_truth_about_95_percent_of_the_time():
  rng = np.random.default_rng(1)
  covered = 0
  for i in range(60):
    data = _simulated(rng, 0.4)
    lo, hi = stats.interval(stats.hierarchical_bootstrap(data, 400, rng=i))
    covered += lo <= 0.4 <= hi
  assert covered >= 50  # ~95% nominal; a bootstrap over seeds and examples alone gets ~60%.


def _scores(rates_by_seed, n=100, seed=0):
  """`{seed: {kind: {(task, lang): correctness}}}` with cell c of seed s at rates[s][c]."""
  rng = np.random.default_rng(seed)
  return {s: {"unseen_pair": {(f"t{c}", "x"): (rng.random(n) < r).astype(float)
                              for c, r in enumerate(rates)}}
          for s, rates in enumerate(rates_by_seed)}


def test_a_zero_effect_covers_zero_and_a_paired_copy_is_exactly_zero():
  a = _scores([[0.2, 0.5, 0.0]] * 5, seed=1)
  b = _scores([[0.2, 0.5, 0.0]] * 5, seed=2)  # Same rates, other draws.
  diff = stats.estimate([a, b], "unseen_pair", n_boot=500)
  assert diff["ci95"][0] < 0 < diff["ci95"][1] and diff["p_sign_flip"] > 0.05
  same = stats.estimate([a, a], "unseen_pair", n_boot=200)
  assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_sign_flip"] == 1.0
  assert same["n_seeds"] == 5 and same["n_cells"] == 15
  assert stats.floor_share([a, b], "unseen_pair") == {"at_floor": 5, "cells": 15,
                                                      "share": pytest.approx(1 / 3)}


def test_a_positive_effect_in_every_cell_is_found():
  better = _scores([[0.4, 0.7, 0.2]] * 10, seed=3)
  worse = _scores([[0.2, 0.5, 0.0]] * 10, seed=4)
  diff = stats.estimate([better, worse], "unseen_pair", n_boot=500)
  assert 0.1 < diff["ci95"][0] and diff["ci95"][1] < 0.3
  assert diff["p_sign_flip"] == pytest.approx(2 / 2 ** 10)
  assert stats.estimate([better, worse], "seen") is None


def _archived_run(archive, grid, spec, seed, rates):
  """An archived run as the study writes it: each kind's cells at the given rates."""
  rng = np.random.default_rng([seed, len(spec.name)])
  cells = []
  for kind, kind_rates in rates.items():
    for c, rate in enumerate(kind_rates):
      correct = (rng.random(200) < rate).astype(int).tolist()
      cells.append({"task": f"t{c}", "lang": kind[:4], "split": kind, "metric": "exact_match",
                    "value": float(np.mean(correct)), "n": 200, "correct": correct})
  record = {"method": spec.name, "seed": seed, "key": runs.run_key(grid, spec, seed),
            "holdout": {}, "trained_params": 100 if spec.name == "lora" else 300,
            "validation": cells, "test": cells, "wall_seconds": 1.0}
  path = runs.archive_path(grid, spec, seed, archive)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(json.loads(json.dumps(record)), f)


def test_confirm_builds_the_interface_schema_from_the_archive_alone(tmp_path, capsys):
  archive, seeds = str(tmp_path / "archive"), list(range(3, 13))
  flix, lora = methods.method("flix_derived_p0.0"), methods.method("lora")
  for seed in seeds:
    _archived_run(archive, confirm.grid_at("offline2", finetune_steps=40,
                                           finetune_learning_rate=3e-3), flix, seed,
                  {"unseen_pair": [0.5, 0.3, 0.0], "seen": [0.8] * 4, "unseen_lang": [0.1, 0.0]})
    _archived_run(archive, confirm.grid_at("offline2", finetune_steps=40), lora, seed,
                  {"unseen_pair": [0.3, 0.3, 0.0], "seen": [0.8] * 4, "unseen_lang": [0.1, 0.0]})
  # A run of another configuration (another rate) in the archive is never read.
  _archived_run(archive, confirm.grid_at("offline2", finetune_steps=40,
                                         finetune_learning_rate=1e-2), lora, 3,
                {"unseen_pair": [1.0] * 3, "seen": [1.0] * 4, "unseen_lang": [1.0] * 2})
  out = tmp_path / "confirmatory" / "study.json"
  argv = ["--archive", archive, "--grid", "offline2", "--flix", "flix_derived_p0.0", "--lora",
          "lora", "--seeds", "3-12", "--finetune_steps", "40", "--flix_learning_rate", "3e-3",
          "--lora_learning_rate", "1e-3", "--n_boot", "300", "--out", str(out)]
  assert confirm.main(argv) == 0
  study = json.loads(out.read_text())
  primary = study["primary"]
  assert primary["grid"] == "offline2" and primary["methods"] == ["flix_derived_p0.0", "lora"]
  assert primary["seeds"] == seeds and primary["budget"]["finetune_steps"] == 40
  assert primary["budget"]["finetune_learning_rate"] == {"flix_derived_p0.0": 3e-3,
                                                          "lora": 1e-3}
  difference = primary["difference"]
  assert set(difference) >= {"mean", "ci95", "p_sign_flip"}
  assert difference["mean"] == pytest.approx(0.2 / 3, abs=0.03)  # One cell of three, +0.2.
  assert difference["ci95"][0] < difference["mean"] < difference["ci95"][1]
  assert primary["floor"]["at_floor"] == 10 and primary["floor"]["cells"] == 30
  assert len(primary["cells"]) == 30
  assert set(study["secondary"]) == {"seen", "unseen_lang"}
  for entry in study["secondary"].values():
    assert set(entry["difference"]) >= {"mean", "ci95", "p_sign_flip", "p_holm"}
    assert entry["difference"]["p_holm"] >= entry["difference"]["p_sign_flip"]
    assert entry["methods"] == primary["methods"] and entry["seeds"] == seeds
  assert len(study["archive"]) == 20 and study["trained_params"]["lora"] == 100
  assert "primary (flix_derived_p0.0 - lora, unseen pairs, test, 10 seeds)" in \
      capsys.readouterr().out
  # A seed without its run is an error naming the file it looked for.
  assert confirm.main([*argv[:-2], "--seeds", "3-13", "--out", str(out)]) == 1
  assert "no archived run of flix_derived_p0.0 seed 13" in capsys.readouterr().err


def test_seed_ranges_parse():
  assert confirm.seed_range("3-12") == list(range(3, 13))
  assert confirm.seed_range("0,2") == [0, 2]
  with pytest.raises(Exception, match="expected distinct seeds"):
    confirm.seed_range("1,1")
  assert grids.offline2_grid().name == "offline2"


def _write(archive, grid, spec, seed, validation, test):
  """An archived run whose validation and test cells are correct at the given rates."""
  cells = lambda rates: [
      {"task": f"t{c}", "lang": kind[:4], "split": kind, "metric": "exact_match", "value": r,
       "n": 10, "correct": [1] * int(10 * r) + [0] * (10 - int(10 * r))}
      for kind, kind_rates in rates.items() for c, r in enumerate(kind_rates)]
  path = runs.archive_path(grid, spec, seed, archive)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(json.loads(json.dumps(
        {"method": spec.name, "seed": seed, "key": runs.run_key(grid, spec, seed),
         "trained_params": 1, "validation": cells(validation), "test": cells(test)})), f)


def test_the_sweep_table_chooses_each_side_on_validation_only(tmp_path, capsys):
  from experiments.study import sweep
  archive = str(tmp_path / "archive")
  grid = lambda rate: confirm.grid_at("offline2", finetune_learning_rate=rate)
  lora, r59, derived = (methods.method(m) for m in ("lora", "lora_r59", "flix_derived_p0.0"))
  worse = {"unseen_pair": [0.1], "seen": [0.5], "unseen_lang": [0.0]}
  for seed in (0, 1, 2):
    _write(archive, grid(1e-3), lora, seed, worse, {"unseen_pair": [1.0], "seen": [1.0],
                                                    "unseen_lang": [1.0]})  # Test: ignored.
    _write(archive, grid(3e-3), lora, seed, {"unseen_pair": [0.3], "seen": [0.5],
                                             "unseen_lang": [0.0]}, worse)
    _write(archive, grid(1e-3), r59, seed, {"unseen_pair": [0.3], "seen": [0.7],
                                            "unseen_lang": [0.0]}, worse)  # Tie: more seen.
    _write(archive, grid(1e-3), derived, seed, {"unseen_pair": [0.2], "seen": [0.9],
                                                "unseen_lang": [0.1]}, worse)
  _write(archive, grid(1e-2), derived, 0, {"unseen_pair": [0.9], "seen": [0.9],
                                           "unseen_lang": [0.1]}, worse)  # Seeds 1, 2 missing.
  assert sweep.main(["--archive", archive, "--grid", "offline2", "--seeds", "0,1,2"]) == 0
  out = capsys.readouterr().out
  assert "| lora | lora | 0.003 | 1000 | constant | 3000 | 0.500 | 0.300 | 0.000 |" in out
  assert "lora: 3 configurations ({'lora': 2, 'lora_r59': 1}); chosen: lora_r59 at rate 0.001" \
      in out
  assert "flix: 1 configurations ({'flix_derived_p0.0': 1}); chosen: flix_derived_p0.0 at rate " \
      "0.001" in out
  assert "0.01 |" not in out  # The incomplete configuration is not a row.
  assert sweep.main(["--archive", archive, "--grid", "offline2", "--seeds", "5"]) == 1
