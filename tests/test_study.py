"""experiments.study: the quick study end to end (schema, cache, resume), and its statistics."""

import dataclasses
import json
import os
import threading

import jax
import numpy as np
import pytest

from flix import checkpoints, files
from experiments.study import cli, compare, grids, methods, report, runs, stats


@pytest.mark.slow
def test_quick_study_writes_the_pinned_schema_and_reuses_its_cache(tmp_path, capsys):
  out = tmp_path / "study"
  # --quick alone: offline2's quick grid, seed 0, lora and flix.
  argv = ["--quick", "--out", str(out), "--cache_dir", str(tmp_path / "cache"), "--n_boot",
          "200"]
  assert cli.main(argv) == 0
  study = json.loads((out / "offline2" / "study.json").read_text())
  assert study["grid"] == "offline2" and study["seeds"] == [0]
  assert study["methods"] == ["lora", "flix"]
  assert {(r["method"], r["seed"]) for r in study["runs"]} == {("lora", 0), ("flix", 0)}
  holdout = study["holdouts"]["0"]
  held = {split: {tuple(p) for p in cells["unseen_pairs"]} | {
      (t, l) for t in ("month_year", "cardinal") for l in cells["unseen_langs"]}
          for split, cells in holdout["splits"].items()}
  assert not held["validation"] & held["test"]  # Distinct held-out cells per split.
  for run in study["runs"]:
    assert {c["split"] for c in run["cells"]} == set(report.KINDS)
    for cell in run["cells"]:
      assert set(cell) == {"task", "lang", "split", "metric", "value", "n"}
      assert cell["metric"] == "exact_match" and 0 <= cell["value"] <= 1
      assert cell["n"] == (4 if cell["split"] == "seen" else 8)
      assert cell["split"] == "seen" or (cell["task"], cell["lang"]) in held["test"]
  for method in ("lora", "flix"):
    for kind in report.KINDS:
      entry = study["summary"][method][kind]
      lo, hi = entry["ci95"]
      assert lo <= entry["mean"] <= hi and entry["n_seeds"] == 1
  assert set(study["differences"]) == {"flix-lora"}
  assert set(study["differences"]["flix-lora"]) == set(report.KINDS)
  assert "floor" in study["differences"]["flix-lora"]["unseen_pair"]
  assert len(holdout["unseen_pairs"]) == 2 and len(holdout["unseen_langs"]) == 2
  for name in ("study.md", "differences.png", "heatmap.png"):
    assert (out / "offline2" / name).stat().st_size > 1000, name
  assert "at the floor for both" in (out / "offline2" / "study.md").read_text()
  assert "2 runs trained, 0 from the cache" in capsys.readouterr().out

  # A rerun trains nothing; a run whose results were lost is evaluated again from its
  # checkpoint (an interrupted study resumes), with the same numbers.
  assert cli.main(argv) == 0
  assert "0 runs trained, 2 from the cache" in capsys.readouterr().out
  grid = grids.offline2_grid(quick=True)
  results = os.path.join(runs.run_dir(grid, methods.method("flix"), 0, str(tmp_path / "cache")),
                         runs.RESULTS)
  before = json.loads(open(results).read())
  os.remove(results)
  assert cli.main(argv) == 0
  assert "1 runs trained, 1 from the cache" in capsys.readouterr().out
  after = json.loads(open(results).read())
  assert after["test"] == before["test"] and after["validation"] == before["validation"]

  # The archive carries finished runs to a machine without this cache: nothing is trained
  # there (no base either), and the report is the same.
  archive = str(tmp_path / "archive")
  assert cli.main([*argv, "--archive", archive]) == 0  # Archives what the cache holds.
  capsys.readouterr()
  other = list(argv)
  other[other.index("--cache_dir") + 1] = str(tmp_path / "empty_cache")
  other[other.index("--out") + 1] = str(tmp_path / "study_elsewhere")
  assert cli.main([*other, "--archive", archive]) == 0
  assert "0 runs trained, 2 from the cache" in capsys.readouterr().out
  assert not (tmp_path / "empty_cache").exists()
  elsewhere = json.loads((tmp_path / "study_elsewhere" / "offline2" / "study.json").read_text())
  assert elsewhere["runs"] == study["runs"] and elsewhere["summary"] == study["summary"]


def test_archived_runs_are_read_back_and_a_foreign_one_is_refused(tmp_path):
  grid, spec = grids.offline_grid(quick=True), methods.method("flix")
  cache, archive = str(tmp_path / "cache"), str(tmp_path / "archive")
  finished = json.loads(json.dumps(  # As read back from JSON (tuples become lists).
      {"method": "flix", "seed": 0, "key": runs.run_key(grid, spec, 0),
       "test": [{"task": "t", "lang": "l", "split": "seen", "correct": [1, 0]}]}))
  directory = runs.run_dir(grid, spec, 0, cache)
  os.makedirs(directory)
  with open(os.path.join(directory, runs.RESULTS), "w") as f:
    json.dump(finished, f)
  assert not runs.done(grid, spec, 0, str(tmp_path / "elsewhere"), archive)
  assert runs.run(grid, spec, 0, cache, None, archive_dir=archive) == (finished, "cache")
  path = runs.archive_path(grid, spec, 0, archive)
  assert path.startswith(os.path.join(archive, "offline", "flix_s0_")) and path.endswith(".json")
  assert runs.done(grid, spec, 0, str(tmp_path / "elsewhere"), archive)
  assert runs.run(grid, spec, 0, str(tmp_path / "elsewhere"), None,
                  archive_dir=archive) == (finished, "archive")
  with pytest.raises(ValueError, match="no base checkpoint was given"):
    runs.run(grid, spec, 1, str(tmp_path / "elsewhere"), None, archive_dir=archive)
  with open(path, "w") as f:
    json.dump({**finished, "seed": 1, "key": runs.run_key(grid, spec, 1)}, f)
  with pytest.raises(ValueError, match=r"holds the results of another configuration \(key "):
    runs.run(grid, spec, 0, str(tmp_path / "elsewhere"), None, archive_dir=archive)


def _finished(grid, spec, seed, correct):
  """A finished run's results as `runs.run` writes them: one cell of each kind."""
  cells = [{"task": "month_year", "lang": lang, "split": kind, "metric": "exact_match",
            "value": sum(correct) / len(correct), "n": len(correct), "correct": list(correct)}
           for kind, lang in zip(report.KINDS, ("en", "fr", "pt"))]
  return {"method": spec.name, "seed": seed, "key": runs.run_key(grid, spec, seed),
          "holdout": {"unseen_pairs": [["month_year", "fr"]], "unseen_langs": ["pt"]},
          "trained_params": 7, "test": cells, "validation": cells, "wall_seconds": 60.0}


def _write_finished(cache, grid, spec, seed, correct):
  """As a study process writes a finished run: atomically (another process may read it now)."""
  directory = runs.run_dir(grid, spec, seed, cache)
  files.write_json(os.path.join(directory, runs.RESULTS), _finished(grid, spec, seed, correct))


def test_a_run_another_process_holds_is_taken_last_and_never_trained_twice(
    tmp_path, capsys, monkeypatch):
  grid, lora, flix = grids.offline_grid(quick=True), methods.method("lora"), methods.method("flix")
  cache = str(tmp_path / "cache")
  flix_dir = runs.run_dir(grid, flix, 0, cache)
  # The run-level contract: refused at once without waiting, else waited for and read back.
  with runs.claimed(flix_dir, "flix seed 0"):  # A second open file: as another process.
    with pytest.raises(runs.RunBusy, match="flix seed 0 on offline is being trained by another"):
      runs.run(grid, flix, 0, cache, base="never-read", wait=False)

  # The CLI: LoRA is finished; "another process" (a thread holding flix's lock) finishes flix
  # only after the CLI has found it busy. The CLI goes on, then waits, and trains nothing.
  _write_finished(cache, grid, lora, 0, [1, 0])
  os.makedirs(os.path.join(cache, "bases", f"offline_{runs.digest(runs.base_key(grid))}",
                           f"checkpoint_{grid.budget.pretrain_steps}"))  # The cached base.
  real_run, real_log = runs.run, runs.log
  found_busy, cli_waits, holding = threading.Event(), threading.Event(), threading.Event()

  def run_noting_busy(*args, **kwargs):
    try:
      return real_run(*args, **kwargs)
    except runs.RunBusy:
      found_busy.set()
      raise

  def log_noting_wait(message):
    real_log(message)
    if message.startswith("[study] waiting for another process"):
      cli_waits.set()

  def other_process():
    with runs.claimed(flix_dir, "flix seed 0"):
      holding.set()
      found_busy.wait(timeout=60)
      cli_waits.wait(timeout=60)  # Finish only once the CLI blocks on the lock: it "waited".
      _write_finished(cache, grid, flix, 0, [1, 1])

  monkeypatch.setattr(runs, "run", run_noting_busy)
  monkeypatch.setattr(runs, "log", log_noting_wait)
  other = threading.Thread(target=other_process)
  other.start()
  holding.wait(timeout=60)
  out = tmp_path / "study"
  assert cli.main(["--quick", "--grids", "offline", "--seeds", "0", "--methods", "lora,flix",
                   "--out", str(out), "--cache_dir", cache, "--n_boot", "200"]) == 0
  other.join()
  captured = capsys.readouterr()
  assert "flix seed 0 on offline is being trained by another process" in captured.err
  assert "coming back to it after the others" in captured.err
  assert captured.err.index("1/2 runs (offline lora seed 0: cache") < captured.err.index(
      "2/2 runs (offline flix seed 0: waited")
  assert "0 runs trained, 2 from the cache" in captured.out
  study = json.loads((out / "offline" / "study.json").read_text())
  assert study["summary"]["flix"]["seen"]["mean"] == 1.0  # The other process's results.
  assert study["summary"]["lora"]["seen"]["mean"] == 0.5
  assert study["run_seconds"] == 120.0  # The runs' own time, not this command's.


def test_a_base_another_process_pretrains_does_not_hold_up_the_other_grids(
    tmp_path, capsys, monkeypatch):
  # Two grids; "another process" (a thread) holds the first grid's base lock. The CLI goes on
  # to the second grid's runs, then waits for the base; the other process finishes the base
  # and the first grid's runs once the CLI waits, and the CLI trains nothing.
  first = grids.offline_grid(quick=True)
  second = dataclasses.replace(first, name="offline_b")
  lora, flix = methods.method("lora"), methods.method("flix")
  cache = str(tmp_path / "cache")
  for spec in (lora, flix):
    _write_finished(cache, second, spec, 0, [1, 0])
  base_dir = os.path.join(cache, "bases", f"offline_{runs.digest(runs.base_key(first))}")
  with runs.claimed(base_dir, "the offline base"):  # The base-level contract.
    with pytest.raises(runs.RunBusy, match="the offline base is being trained by another"):
      runs.pretrain_base(first, cache, wait=False)
  real_log = runs.log
  cli_waits, holding = threading.Event(), threading.Event()

  def log_noting_wait(message):
    real_log(message)
    if message.startswith("[study] waiting for another process to finish the offline base"):
      cli_waits.set()

  def other_process():
    with runs.claimed(base_dir, "the offline base"):
      holding.set()
      cli_waits.wait(timeout=60)
      os.makedirs(os.path.join(base_dir, f"checkpoint_{first.budget.pretrain_steps}"))
      for spec in (lora, flix):
        _write_finished(cache, first, spec, 0, [1, 1])

  monkeypatch.setattr(runs, "log", log_noting_wait)
  monkeypatch.setattr(cli, "grids", lambda args: [first, second])
  other = threading.Thread(target=other_process)
  other.start()
  holding.wait(timeout=60)
  assert cli.main(["--quick", "--seeds", "0", "--methods", "lora,flix", "--out",
                   str(tmp_path / "study"), "--cache_dir", cache, "--n_boot", "200"]) == 0
  other.join()
  captured = capsys.readouterr()
  assert captured.err.count("the offline base is being trained by another process") == 2
  order = [captured.err.index(f"{i}/4 runs ({name} {spec} seed 0: cache") for i, name, spec in
           ((1, "offline_b", "lora"), (2, "offline_b", "flix"), (3, "offline", "lora"),
            (4, "offline", "flix"))]
  assert order == sorted(order)
  assert captured.err.index("coming back to it after the others") < order[0] < captured.err.index(
      "waiting for another process to finish the offline base") < order[2]
  assert "0 runs trained, 4 from the cache" in captured.out


def test_a_deferred_run_that_has_become_free_is_taken_before_waiting_for_a_busy_one(
    tmp_path, capsys, monkeypatch):
  # "Another process" (a thread) holds both runs at first, so the CLI defers both; it then
  # finishes and frees flix but keeps lora until the CLI has read flix. A CLI that waits for
  # its deferred runs in order blocks on lora (the other process's wait times out); this one
  # takes flix first.
  grid, lora, flix = grids.offline_grid(quick=True), methods.method("lora"), methods.method("flix")
  cache = str(tmp_path / "cache")
  base_dir = os.path.join(cache, "bases", f"offline_{runs.digest(runs.base_key(grid))}")
  os.makedirs(os.path.join(base_dir, f"checkpoint_{grid.budget.pretrain_steps}"))
  both_deferred, flix_freed, flix_read, holding = (threading.Event() for _ in range(4))
  calls, waited_for_read = [], []
  real_run = runs.run

  def tracking_run(grid, spec, seed, *args, wait=True, **kwargs):
    calls.append((spec.name, wait))
    try:
      out = real_run(grid, spec, seed, *args, wait=wait, **kwargs)
    finally:
      if len(calls) == 2:  # The first pass ends: the other process frees flix now.
        both_deferred.set()
        flix_freed.wait(timeout=60)
    if spec.name == "flix":
      flix_read.set()
    return out

  def other_process():
    with runs.claimed(runs.run_dir(grid, lora, 0, cache), "lora seed 0"):
      with runs.claimed(runs.run_dir(grid, flix, 0, cache), "flix seed 0"):
        holding.set()
        both_deferred.wait(timeout=60)
        _write_finished(cache, grid, flix, 0, [1, 1])
      flix_freed.set()
      waited_for_read.append(flix_read.wait(timeout=20))
      _write_finished(cache, grid, lora, 0, [1, 0])

  monkeypatch.setattr(runs, "run", tracking_run)
  monkeypatch.setattr(cli, "grids", lambda args: [grid])
  other = threading.Thread(target=other_process)
  other.start()
  holding.wait(timeout=60)
  assert cli.main(["--quick", "--seeds", "0", "--methods", "lora,flix", "--out",
                   str(tmp_path / "study"), "--cache_dir", cache, "--n_boot", "200"]) == 0
  other.join()
  assert waited_for_read == [True]  # flix was read while lora was still busy.
  err = capsys.readouterr().err
  # lora is read back once the other process frees it: after waiting, or in a pass after.
  assert err.index("(offline flix seed 0: cache") < err.index("(offline lora seed 0: ")
  assert calls[:4] == [("lora", False), ("flix", False), ("lora", False), ("flix", False)]
  assert err.count("coming back to it after the others") == 2  # Once per run.


def test_compare_pairs_runs_that_differ_only_in_the_lever(tmp_path, capsys):
  grid, lora = grids.offline_grid(quick=True), methods.method("lora")
  archive = tmp_path / "archive"
  (archive / "offline").mkdir(parents=True)

  def archived(budget_changes, seed, correct):
    g = _with_budget(grid, **budget_changes)
    path = runs.archive_path(g, lora, seed, str(archive))
    with open(path, "w") as f:
      json.dump(_finished(g, lora, seed, correct), f)

  for seed in (0, 1):
    archived({"finetune_steps": 40}, seed, [0, 0, 1, 1])
    archived({"finetune_steps": 80}, seed, [1, 1, 1, 1])
  archived({"finetune_steps": 40, "schedule": "linear"}, 0, [0, 0, 0, 0])  # Another lever.
  archived({"finetune_steps": 160}, 2, [1, 1, 1, 1])  # No partner at 40 for seed 2.
  argv = ["--archive", str(archive), "--grid", "offline", "--methods", "lora", "--vary",
          "finetune_steps", "--values", "40,80", "--n_boot", "200"]
  assert compare.main(argv) == 0
  out = capsys.readouterr().out
  assert "finetune_steps 80 minus 40" in out
  assert "| lora, validation | +0.500 [" in out and "| lora, test | +0.500 [" in out
  result = compare.compare(compare.read_runs("offline", str(archive), None), ["lora"],
                           "finetune_steps", ["40", "80"], n_boot=200)
  for kind in report.KINDS:  # 1.0 - 0.5 in every cell; resampling 0, 0, 1, 1 moves it.
    entry = result["lora"]["test"][kind]
    assert entry["mean"] == pytest.approx(0.5) and entry["n_seeds"] == 2
    assert 0.0 < entry["ci95"][0] < 0.5 < entry["ci95"][1] <= 1.0
  # The schedule lever at 40 steps pairs the linear run with seed 0's constant one only.
  linear = compare.compare(compare.read_runs("offline", str(archive), None), ["lora"],
                           "schedule", ["constant", "linear"], n_boot=200)
  assert linear["lora"]["validation"]["seen"]["mean"] == pytest.approx(-0.5)
  assert linear["lora"]["validation"]["seen"]["n_seeds"] == 1
  for args, message in [
      (["--vary", "steps"], "--vary 'steps' is not a budget field; expected one of ["),
      (["--values", "40,320"], "no seed has runs at both finetune_steps = 40 and 320"),
      (["--methods", "flix"], "no runs of method 'flix'; found ['lora']"),
      (["--grid", "morph"], "no finished runs of grid 'morph' under ")]:
    bad = list(argv)
    for flag, value in zip(args[::2], args[1::2]):
      bad[bad.index(flag) + 1] = value
    assert compare.main(bad) == 1
    assert message in capsys.readouterr().err


def _with_budget(grid, **changes):
  return dataclasses.replace(grid, budget=dataclasses.replace(grid.budget, **changes))


def _final_params(grid, spec, seed, cache):
  path = os.path.join(runs.run_dir(grid, spec, seed, cache), "train",
                      f"checkpoint_{grid.budget.finetune_steps}")
  return jax.tree.leaves(checkpoints.load_model(path)[2])


@pytest.mark.slow
def test_a_longer_run_continues_a_shorter_one_and_ends_bit_for_bit_where_step_0_would(
    tmp_path, capsys):
  longer, spec = grids.offline2_grid(quick=True), methods.method("flix")
  steps = longer.budget.finetune_steps
  shorter = _with_budget(longer, finetune_steps=steps // 2)
  cache, elsewhere = str(tmp_path / "cache"), str(tmp_path / "elsewhere")
  base = runs.pretrain_base(longer, cache)
  runs.run(shorter, spec, 0, cache, base)
  capsys.readouterr()
  continued, how = runs.run(longer, spec, 0, cache, base)
  assert how == "trained"
  assert f"starting from step {steps // 2} of" in capsys.readouterr().err
  from_zero, _ = runs.run(longer, spec, 0, elsewhere, base)  # No shorter run there.
  assert "starting from step" not in capsys.readouterr().err
  assert continued["test"] == from_zero["test"]
  assert continued["validation"] == from_zero["validation"]
  ends = _final_params(longer, spec, 0, cache)
  for a, b in zip(ends, _final_params(longer, spec, 0, elsewhere), strict=True):
    np.testing.assert_array_equal(a, b)
  halfway = _final_params(shorter, spec, 0, cache)
  assert any(not np.array_equal(a, b) for a, b in zip(ends, halfway, strict=True))
  curve = [json.loads(line)["step"] for line in open(os.path.join(
      runs.run_dir(longer, spec, 0, cache), "train", "metrics.jsonl"))]
  assert curve[0] < steps // 2 < curve[-1] == steps  # The whole curve, both halves.


def _fake_run(cache, grid, spec, seed, step):
  """A cached run dir with key.json, a checkpoint at `step` and its metrics (no arrays)."""
  directory = runs.run_dir(grid, spec, seed, cache)
  checkpoint = os.path.join(directory, "train", f"checkpoint_{step}")
  os.makedirs(checkpoint)
  with open(os.path.join(checkpoint, "train_state.json"), "w") as f:
    json.dump({"step": step}, f)
  with open(os.path.join(directory, "key.json"), "w") as f:
    json.dump(runs.run_key(grid, spec, seed), f)
  with open(os.path.join(directory, "train", "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (step // 2, step))
  return directory


def test_only_a_shorter_run_of_the_same_configuration_under_a_constant_rate_is_continued(
    tmp_path):
  grid, spec = grids.offline_grid(quick=True), methods.method("flix")
  cache = str(tmp_path / "cache")
  for steps, seed, lr in ((10, 0, 1e-3), (20, 0, 1e-3), (20, 1, 1e-3), (30, 0, 2e-3)):
    _fake_run(cache, _with_budget(grid, finetune_steps=steps, finetune_learning_rate=lr),
              spec, seed, steps)
  target = runs.run_dir(grid, spec, 0, cache)  # 40 steps, seed 0, rate 1e-3.
  copied = runs.start_from_shorter_run(target, runs.run_key(grid, spec, 0))
  assert copied == os.path.join(target, "train", "checkpoint_20")  # The longest, same seed/rate.
  assert json.load(open(os.path.join(copied, "train_state.json"))) == {"step": 20}
  assert [json.loads(line)["step"] for line in open(
      os.path.join(target, "train", "metrics.jsonl"))] == [10, 20]
  assert sorted(os.listdir(os.path.join(target, "train"))) == ["checkpoint_20", "metrics.jsonl"]

  # A decaying rate depends on the number of steps; a run being trained now is passed over.
  linear = _with_budget(grid, schedule="linear")
  _fake_run(cache, _with_budget(linear, finetune_steps=20), spec, 0, 20)
  assert runs.start_from_shorter_run(runs.run_dir(linear, spec, 0, cache),
                                     runs.run_key(linear, spec, 0)) is None
  longest = _fake_run(cache, _with_budget(grid, finetune_steps=35), spec, 0, 35)
  other = _with_budget(grid, finetune_steps=50)
  with runs.claimed(longest, "flix seed 0"):
    copied = runs.start_from_shorter_run(runs.run_dir(other, spec, 0, cache),
                                         runs.run_key(other, spec, 0))
  assert copied.endswith(os.path.join("train", "checkpoint_20"))


def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys):
  for argv, message in ((["--methods", "lora,flix_q"], "unknown method 'flix_q'"),
                        (["--grids", "mnist"], "unknown grids ['mnist']"),
                        (["--seeds", "1,1"], "expected distinct integers"),
                        (["--finetune_steps", "0"], "--finetune_steps must be >= 1")):
    with pytest.raises(SystemExit):
      cli.main([*argv, "--out", str(tmp_path / "never")])
    assert message in capsys.readouterr().err
  assert not (tmp_path / "never").exists()


def test_every_method_has_lora_s_per_example_rank():
  methods.check_budget(methods.METHODS.values())
  with pytest.raises(ValueError, match=r"per-example rank 16"):
    methods.check_budget([methods.MethodSpec("odd", "flix", (("task", 8), ("lang", 4)))])
  # A rank for the task alone once left the language adapter at the data's rank while the
  # method reported rank 8: every type of the method's space needs its rank.
  with pytest.raises(ValueError, match=r"feature_ranks name \['task'\].*\['task', 'lang'\]"):
    methods.MethodSpec("odd", "flix", (("task", 8),))


def test_unseen_languages_keep_a_trained_sibling():
  langs = ("bel", "dan", "deu", "eng", "fin", "fra", "hun", "ita", "kat", "mkd", "spa", "tur")
  draws = {grids.draw_unseen_langs(langs, 2, seed) for seed in range(8)}
  assert len(draws) > 3
  family = {"bel": "Slavic", "mkd": "Slavic", "dan": "G", "deu": "G", "eng": "G", "fra": "R",
            "ita": "R", "spa": "R"}
  for drawn in draws:
    assert len(drawn) == 2 and set(drawn) <= set(family)  # fin, hun, kat, tur have no sibling.
    assert set(drawn) != {"bel", "mkd"}  # Balto-Slavic keeps a trained member.


def fake_runs(rates, seeds=(0, 1, 2), cells=4, n=200, seed=0):
  """Runs whose cells' examples are correct with probability rates[kind]."""
  rng = np.random.default_rng(seed)
  out = []
  for s in seeds:
    cell_list = [{"task": f"t{c}", "lang": "x", "split": kind,
                  "correct": (rng.random(n) < rate).astype(int).tolist()}
                 for kind, rate in rates.items() for c in range(cells)]
    out.append({"seed": s, "test": cell_list})
  return out


def test_bootstrap_intervals_cover_the_truth_and_pairing_tightens_them():
  lora = fake_runs({"seen": 0.5, "unseen_pair": 0.2})
  better = fake_runs({"seen": 0.5, "unseen_pair": 0.3}, seed=1)
  summary, differences = stats.summarize(
      {"lora": stats.kind_scores(lora), "flix": stats.kind_scores(better)},
      ["seen", "unseen_pair"], n_boot=500)
  for name, truth in (("lora", 0.2), ("flix", 0.3)):
    lo, hi = summary[name]["unseen_pair"]["ci95"]
    assert lo < truth < hi and hi - lo < 0.1
  lo, hi = differences["flix-lora"]["unseen_pair"]["ci95"]
  assert 0.0 < lo and hi < 0.2  # A 0.1 difference, detected.
  lo, hi = differences["flix-lora"]["seen"]["ci95"]
  assert lo < 0.0 < hi  # No difference.
  # Identical runs: the paired difference is exactly zero, however noisy the runs are.
  same = stats.summarize({"lora": stats.kind_scores(lora), "copy": stats.kind_scores(lora)},
                         ["seen"], n_boot=200)[1]
  assert same["copy-lora"]["seen"] == {
      "mean": 0.0, "ci95": [0.0, 0.0], "n_seeds": 3, "n_cells": 12, "p_sign_flip": 1.0,
      "per_seed": {"0": 0.0, "1": 0.0, "2": 0.0},
      "floor": {"at_floor": 0, "cells": 12, "share": 0.0}}


def test_an_ablation_is_also_paired_against_its_own_reference():
  """`--ablation dropout`: besides LoRA, every FLix variant minus FLix without dropout."""
  for name, reference in methods.ABLATION_REFERENCES.items():
    assert reference in methods.ABLATIONS[name], name
  rates = {"flix_p0.0": 0.2, "flix": 0.35, "lora": 0.2}
  results = {}
  for i, (name, rate) in enumerate(rates.items()):
    runs_ = fake_runs({"seen": 0.5, "unseen_pair": rate}, seed=i)
    for r in runs_:
      for c in r["test"]:
        c.update(metric="exact_match", value=float(np.mean(c["correct"])), n=len(c["correct"]))
    results[name] = [{**r, "validation": r["test"], "trained_params": 10,
                      "holdout": {"unseen_pairs": [], "unseen_langs": []}} for r in runs_]
  study = report.build(grids.offline_grid(quick=True), list(rates), [0, 1, 2], results, 1.0,
                       n_boot=300, reference="flix_p0.0")
  assert study["reference"]["method"] == "flix_p0.0"
  for split in ("test", "validation"):
    assert set(study["reference"][split]) == {"flix-flix_p0.0"}  # LoRA is not an ablation arm.
    lo, hi = study["reference"][split]["flix-flix_p0.0"]["unseen_pair"]["ci95"]
    assert 0.0 < lo and hi < 0.3  # The 0.15 gain, found.
  assert study["differences"]["flix_p0.0-lora"]["unseen_pair"]["ci95"][0] < 0.0 < (
      study["differences"]["flix_p0.0-lora"]["unseen_pair"]["ci95"][1])
  text = report.markdown(study)
  assert text.count("Against the ablation's reference, flix_p0.0 (paired):") == 2
  assert "| flix-flix_p0.0 | " in text
  with pytest.raises(ValueError, match=r"reference 'flix_q' is not among the methods"):
    report.build(grids.offline_grid(quick=True), list(rates), [0, 1, 2], results, 1.0,
                 n_boot=100, reference="flix_q")
