"""The training entry point on a seconds-scale offline benchmark: checkpoints, exact resume,
sharding, adapter-only checkpoints, and every robustness case."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

from entry import (GIN_DIR, ROOT, TINY_OFFLINE as GIN, assert_trees_equal, copy_run, run_entry,
                   run_train, saved_state)
from flix import checkpoints, gin_utils
from flix import train as train_entry
from flix.errors import NonFiniteLossError
from flix.training.checkpointer import latest, step_dirs


def spawn_train(model_dir, *bindings):
  argv = [sys.executable, "-m", "flix.train", f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN}",
          f"--gin.MODEL_DIR='{model_dir}'", *bindings]
  return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def wait_for(predicate, proc, timeout=240):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.05)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert run_train(straight) == 0
  proc = spawn_train(killed, "--gin.TRAIN_STEPS=1000")
  wait_for(lambda: latest(str(killed)) is not None, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = latest(str(killed))
  assert first.endswith("checkpoint_4"), first
  assert run_train(killed) == 0  # Resumes from checkpoint_4 and trains to step 8.
  a, b = saved_state(straight / "checkpoint_8"), saved_state(killed / "checkpoint_8")
  assert_trees_equal(a, b)
  meta = json.loads((killed / "checkpoint_8" / "train_state.json").read_text())
  assert meta == {"step": 8, "data_position": 8, "data_shards": 1, "pack": False}
  losses = [json.loads(l)["loss"] for l in (straight / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 4 and losses[-1] < losses[0]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight / "train"))


def test_mesh_data4_model2_matches_one_device(tmp_path):
  one, many = tmp_path / "one", tmp_path / "many"
  steps = ["--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=3"]
  assert run_train(one, *steps, "--gin.MESH_SHAPE=(1, 1)") == 0
  assert run_train(many, *steps, "--gin.MESH_SHAPE=(4, 2)") == 0
  (pa, ra), (pb, rb) = saved_state(one / "checkpoint_3"), saved_state(many / "checkpoint_3")
  # Sharded reductions reorder float32 sums; Adafactor rescales updates, so allow 1e-5.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), pa, pb)
  la = [json.loads(l)["loss"] for l in (one / "metrics.jsonl").read_text().splitlines()]
  lb = [json.loads(l)["loss"] for l in (many / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  assert not np.array_equal(pa["decoder"]["layers_0"]["mlp"]["wo"]["lora_b_task"], 0)


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_adapter_only_checkpoint_holds_adapters_and_references_base(tmp_path):
  base_dir, tuned = tmp_path / "base", tmp_path / "tuned"
  wide = ["--gin.TRAIN_STEPS=2", "--gin.T5Config.emb_dim=256", "--gin.T5Config.mlp_dim=512"]
  assert run_train(base_dir, "--gin.METHOD='full'", "--gin.FEATURE_DROPOUT=0.0", *wide) == 0
  base = str(base_dir / "checkpoint_2")
  assert run_train(tuned, f"--gin.INITIAL_CHECKPOINT_PATH='{base}'", *wide) == 0
  ckpt = tuned / "checkpoint_2"
  assert json.loads((ckpt / "base.json").read_text()) == {"base_checkpoint": base}
  model_config, flix, params = checkpoints.load_model(str(ckpt))
  _, _, base_params = checkpoints.load_model(base)
  adapters = checkpoints.adapter_leaves(params)
  n_adapter = sum(v.size for v in jax.tree.leaves(adapters))
  n_base = sum(v.size for v in jax.tree.leaves(base_params))
  size = _dir_bytes(ckpt / "params")
  # float32 values (compressed: rows of features absent from 2 steps are still zero in B), plus
  # orbax's per-array metadata.
  overhead = 8_000 * len(jax.tree.leaves(adapters))
  assert n_adapter * 4 / 2 <= size <= n_adapter * 4 + overhead, (size, n_adapter)
  assert size < n_base * 4 / 3, (size, n_base)
  assert_trees_equal(checkpoints.strip_adapters(params), base_params)  # Frozen base.
  assert any(np.any(v) for v in jax.tree.leaves(checkpoints.adapter_leaves(params)))


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
  proc = spawn_train(tmp_path, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=100000")
  metrics = tmp_path / "metrics.jsonl"
  wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  (step, path), = step_dirs(str(tmp_path))
  assert 2 <= step < 100000
  assert f"stopped by SIGTERM; checkpoint saved at {path}" in err
  saved_state(path)  # Complete and readable.


def open_files_under(directory):
  """The files under `directory` this process holds open (Linux: /proc/self/fd)."""
  fds = "/proc/self/fd"
  if not os.path.isdir(fds):
    pytest.skip("needs /proc/self/fd")
  paths = []
  for fd in os.listdir(fds):
    try:
      paths.append(os.readlink(os.path.join(fds, fd)))
    except OSError:  # Closed since listed.
      pass
  return sorted(p for p in paths if p.startswith(os.path.realpath(directory) + os.sep))


def test_nan_loss_stops_keeps_last_good_checkpoint_and_closes_files(trained_run, tmp_path,
                                                                    capsys, monkeypatch):
  assert open_files_under(trained_run) == []  # The run that trained it closed its files.
  copy_run(trained_run, tmp_path, drop_steps=[8], dirs_exist_ok=True)  # Stopped at step 4.
  good = saved_state(tmp_path / "checkpoint_4")
  # FLIX_TRACEBACK re-raises the error: its traceback keeps the run's objects alive, so a file
  # still open here is one the failed run left open (garbage collection would close it later).
  monkeypatch.setenv("FLIX_TRACEBACK", "1")
  gin.clear_config()
  with pytest.raises(NonFiniteLossError):
    gin_utils.run(train_entry.main, [
        f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN}", f"--gin.MODEL_DIR='{tmp_path}'",
        "--gin.EncoderDecoderModel.z_loss=1e39", "--gin.EVAL_PERIOD=100",
        "--gin.EVAL_EXAMPLES=2"])
  assert open_files_under(tmp_path) == []  # metrics.jsonl, train/ and eval/ events: closed.
  err = capsys.readouterr().err.strip().splitlines()
  assert re.match(r"error: NonFiniteLossError: loss is (nan|inf) at step 6;", err[-1]), err[-1]
  assert err[-1].endswith(f"Last good checkpoint: {tmp_path / 'checkpoint_4'}")
  assert [s for s, _ in step_dirs(str(tmp_path))] == [4]
  assert_trees_equal(saved_state(tmp_path / "checkpoint_4"), good)


def test_in_training_eval_writes_metrics_and_keeps_the_best_checkpoint(tmp_path, capsys):
  eval_bindings = ["--gin.CHECKPOINT_PERIOD=100", "--gin.EVAL_PERIOD=2", "--gin.EVAL_EXAMPLES=2",
                   "--gin.train.keep_checkpoints=1"]
  assert run_train(tmp_path, "--gin.TRAIN_STEPS=6", *eval_bindings,
                   "--gin.BEST_METRIC='seen_pair/sequence_accuracy'") == 0
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = {l["step"]: l for l in lines if "loss" not in l}
  assert sorted(evals) == [2, 4, 6]
  key = "eval/validation/seen_pair/sequence_accuracy"
  for step, line in evals.items():
    assert {key, "eval/validation/unseen_language/sequence_accuracy",
            "eval/validation/overall/sequence_accuracy"} <= set(line), sorted(line)
    report = json.loads((tmp_path / "eval" / "validation" / f"step_{step}" / "report.json")
                        .read_text())
    assert report["step"] == step
    assert line[key] == report["by_kind"]["seen_pair"]["sequence_accuracy"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "eval"))
  # keep_checkpoints=1 keeps the newest and the best (the newest among equal values).
  best = max(evals, key=lambda step: (evals[step][key], step))
  kept = [s for s, _ in step_dirs(str(tmp_path))]
  assert kept == sorted({6, best}), (kept, {s: l[key] for s, l in evals.items()})
  for step in kept:
    meta = json.loads((tmp_path / f"checkpoint_{step}" / "train_state.json").read_text())
    assert meta["eval"] == {k[len("eval/validation/"):]: v for k, v in evals[step].items()
                            if k != "step"}
  # Resumed to step 8 with a metric the evaluation lacks: step 8 is saved, then a clear error.
  assert run_train(tmp_path, "--gin.TRAIN_STEPS=8", *eval_bindings,
                   "--gin.BEST_METRIC='overall/bleu'") == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert ("EvalSettings.best_metric 'overall/bleu' is not among the metrics of the evaluation "
          "at step 8: ['overall/cer'") in err, err
  assert 8 in [s for s, _ in step_dirs(str(tmp_path))]


def recorded_checkpoints(model_dir):
  """checkpoint_{2,4,6,8,10} (train_state.json only) recording seen_pair/sequence_accuracy 0.5,
  0.7, NaN, 0.6 and nothing."""
  for step, value in ((2, 0.5), (4, 0.7), (6, float("nan")), (8, 0.6), (10, None)):
    (model_dir / f"checkpoint_{step}").mkdir()
    meta = {"step": step, "data_position": step}
    if value is not None:
      meta["eval"] = {"seen_pair/sequence_accuracy": value}
    (model_dir / f"checkpoint_{step}" / "train_state.json").write_text(json.dumps(meta))


def test_best_checkpoint_by_recorded_metric(tmp_path):
  from flix.training.checkpointer import Checkpointer
  recorded_checkpoints(tmp_path)
  best = lambda **kw: Checkpointer(str(tmp_path), None, None, **kw).best()
  assert best(best_metric="seen_pair/sequence_accuracy") == str(tmp_path / "checkpoint_4")
  assert best(best_metric="seen_pair/sequence_accuracy", best_mode="min") == str(
      tmp_path / "checkpoint_2")
  assert best(best_metric="overall/sequence_accuracy") is None
  assert best() is None


@pytest.mark.parametrize("kwargs, kept", [
    ({"keep": 2}, [8, 10]),
    ({"keep": 2, "best_metric": "seen_pair/sequence_accuracy"}, [4, 8, 10]),
    ({"keep": 2, "best_metric": "seen_pair/sequence_accuracy", "best_mode": "min"}, [2, 8, 10]),
    ({"keep": 1, "best_metric": "seen_pair/sequence_accuracy"}, [4, 10]),
    ({"keep": 3, "best_metric": "seen_pair/sequence_accuracy"}, [4, 6, 8, 10]),
    ({"keep": 2, "best_metric": "overall/sequence_accuracy"}, [8, 10]),
])
def test_retention_keeps_the_newest_and_the_best(tmp_path, kwargs, kept):
  """orbax's LatestN + BestN: a NaN or missing metric is never the best."""
  from flix.training.checkpointer import Checkpointer
  recorded_checkpoints(tmp_path)
  removed = Checkpointer(str(tmp_path), None, None, **kwargs).prune()
  assert [s for s, _ in step_dirs(str(tmp_path))] == kept
  assert sorted(removed) == sorted(str(tmp_path / f"checkpoint_{s}")
                                   for s in {2, 4, 6, 8, 10} - set(kept))


@pytest.mark.parametrize("bindings, message", [
    (["--gin.train.foo=3"], "Configurable 'train' doesn't have a parameter named 'foo'"),
    (["--gin.MIXTURE_OR_TASK_NAME='nope'"], "unknown mixture or task 'nope'; registered:"),
    (["--gin.METHOD='adapters'"], "unknown method 'adapters'; expected one of"),
    (["--gin.MESH_SHAPE=(3, 2)"], "BATCH_SIZE 8 is not divisible by the mesh's data axis (3)"),
    (["--gin.MESH_SHAPE=(16, 1)"], "mesh_shape (16, 1) needs 16 devices, 8 are available"),
    (["--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks_module'"],
     "error: ValueError: MIXTURE_OR_TASK_MODULE 'no_such_tasks_module' could not be imported: "
     "ModuleNotFoundError: No module named 'no_such_tasks_module'"),
    # USE_CACHED_TASKS reaches seqio's use_cached: these in-memory tasks were never cached.
    (["--gin.USE_CACHED_TASKS=True"], "does not exist in any of the task cache directories"),
    (["--gin.BEST_METRIC='seen_pair/sequence_accuracy'"],
     "EvalSettings.best_metric 'seen_pair/sequence_accuracy' needs EVAL_PERIOD"),
    (["--gin.EVAL_PERIOD=2", "--gin.BEST_METRIC='exact_match'"],
     "EvalSettings.best_metric must be '<group>/<metric>' with group one of ('seen_pair', "
     "'unseen_pair', 'unseen_language', 'overall')"),
    (["--gin.PACK='yes'"], "PACK (train.pack) must be True, False or 'auto', got 'yes'"),
])
def test_user_errors_are_one_clear_line(tmp_path, capsys, bindings, message):
  assert run_train(tmp_path, *bindings) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1], err[-1]
  assert not step_dirs(str(tmp_path))


def test_missing_required_macro(capsys):
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(train_entry.main, [f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN}"])
  assert exit_info.value.code == 1
  assert "MODEL_DIR" in capsys.readouterr().err.strip().splitlines()[-1]


def test_resume_with_other_feature_values_data_shards_or_packing_is_refused(trained_run,
                                                                            tmp_path, capsys):
  copy_run(trained_run, tmp_path, drop_steps=[8], dirs_exist_ok=True)  # Stopped at step 4.
  code = run_train(tmp_path, "--gin.OfflineConfig.langs=('en', 'es', 'de')")
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert code == 1
  assert "feature values ['es'] of type 'lang' differ from the feature space saved with" in err
  assert run_train(tmp_path, "--gin.train.data_shards=2") == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert (f"{tmp_path / 'checkpoint_4'} was trained with train.data_shards = 1, but this run "
          "sets 2: its data position would not continue the same batches.") in err
  assert run_train(tmp_path, "--gin.PACK=True") == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert (f"{tmp_path / 'checkpoint_4'} was trained with PACK = False, but this run sets PACK = "
          "True: packed and unpacked rows are different batches") in err


@pytest.mark.slow  # Library-level refusal and skip: test_reliability's checkpoint-damaged rows.
def test_damaged_checkpoint_names_itself_and_resumes_from_the_previous_on_request(tmp_path,
                                                                                capsys):
  assert run_train(tmp_path, "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=1") == 0
  store = tmp_path / "checkpoint_2" / "params" / "encoder.encoder_norm.scale"
  chunk = next(p for p in store.iterdir() if not p.name.startswith("."))
  chunk.write_bytes(b"\0" * 7)  # A torn write.
  files = sorted(str(p) for p in tmp_path.rglob("*"))
  assert run_train(tmp_path, "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=1") == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith(f"error: DamagedCheckpointError: checkpoint {tmp_path / 'checkpoint_2'} "
                        "is damaged: cannot read params/encoder/encoder_norm/scale: "), err
  assert (f"Nothing was deleted. To resume from the previous checkpoint "
          f"{tmp_path / 'checkpoint_1'}, rerun with --gin.train.skip_damaged_checkpoints=True"
          in err)
  assert sorted(str(p) for p in tmp_path.rglob("*")) == files  # Nothing written or removed.

  assert run_train(tmp_path, "--gin.TRAIN_STEPS=3", "--gin.CHECKPOINT_PERIOD=1",
                   "--gin.train.skip_damaged_checkpoints=True") == 0
  assert [s for s, _ in step_dirs(str(tmp_path))] == [1, 2, 3]
  assert (tmp_path / "checkpoint_2.damaged" / "params" / "encoder.encoder_norm.scale" /
          chunk.name).read_bytes() == b"\0" * 7  # Kept as it was.
  meta = json.loads((tmp_path / "checkpoint_3" / "train_state.json").read_text())
  assert meta["step"] == 3 and meta["data_position"] == 3
  saved_state(tmp_path / "checkpoint_2")  # Rewritten, readable.


def test_interrupted_write_leaves_no_checkpoint(tmp_path):
  params = {"w": np.ones((2, 2), np.float32)}
  target = tmp_path / "checkpoint_1"
  with pytest.raises(RuntimeError, match="disk full"):
    with checkpoints.atomic_directory(str(target)) as tmp:
      checkpoints.save_pytree(os.path.join(tmp, "params"), params)
      raise RuntimeError("disk full")
  assert os.listdir(tmp_path) == []
  os.makedirs(tmp_path / ".checkpoint_2.tmp-abc" / "params")  # A crashed writer's leftovers.
  assert latest(str(tmp_path)) is None


def test_replicated_arrays_are_written_once_and_read_back(tmp_path):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  tree = {"replicated": jax.device_put(np.arange(16, dtype=np.float32),
                                       NamedSharding(mesh, P())),
          "sharded": jax.device_put(np.arange(32, dtype=np.float32).reshape(4, 8),
                                    NamedSharding(mesh, P(None, "model")))}
  checkpoints.save_pytree(str(tmp_path / "tree"), tree)
  chunks = lambda name: sorted(p.name for p in (tmp_path / "tree" / name).iterdir()
                               if not p.name.startswith("."))
  assert chunks("replicated") == ["0"]  # One chunk, not one slice per replica.
  assert chunks("sharded") == ["0.0", "0.1"]  # One per 'model' shard.
  restored = checkpoints.restore_pytree(str(tmp_path / "tree"))
  jax.tree.map(np.testing.assert_array_equal, restored, jax.tree.map(np.asarray, tree))


def test_train_resumes_where_the_straight_run_went(trained_run, tmp_path):
  """The shared run trained steps 0-8 in one go; a copy stopped at step 4 resumes there and
  ends bit for bit where it did."""
  model_dir = copy_run(trained_run, tmp_path / "run", drop_steps=[8])
  assert run_train(model_dir, "--gin.TRAIN_STEPS=8") == 0  # Resumes at step 4.
  assert [s for s, _ in step_dirs(str(model_dir))] == [4, 8]
  assert_trees_equal(saved_state(model_dir / "checkpoint_8"),
                     saved_state(trained_run / "checkpoint_8"))
  # The host-malloc choice is in the run's config (the test set-up retains freed memory).
  assert (model_dir / "config.gin").read_text().startswith("# host malloc: retain: glibc")


def test_eval_and_infer_of_the_trained_checkpoint(trained_run, tmp_path, capsys):
  from flix import eval as eval_entry, infer as infer_entry
  ckpt = str(trained_run / "checkpoint_8")
  out = tmp_path / "eval"
  assert run_entry(eval_entry, "--gin_file=tiny_eval.gin", f"--gin.CHECKPOINT_PATH='{ckpt}'",
                   f"--gin.EVAL_OUTPUT_DIR='{out}'") == 0
  report = json.loads((out / "report.json").read_text())
  assert set(report["by_kind"]) == {"seen_pair", "unseen_pair", "unseen_language"}
  predictions = sorted(os.listdir(out / "predictions"))
  assert len(predictions) == 6  # 2 tasks x 3 languages.
  lines = (out / "predictions" / predictions[0]).read_text().splitlines()
  assert len(lines) == 4 and "prediction" in json.loads(lines[0])
  assert (out / "report.md").read_text().startswith("#")

  requests = tmp_path / "requests.jsonl"
  requests.write_text("\n".join(json.dumps(r) for r in [
      {"inputs": "ordinal fr: 12", "features": {"task": "ordinal", "lang": "fr"}},
      {"inputs": "cardinal de: 7", "features": {"task": "cardinal", "lang": "de"}}]) + "\n")
  infer_args = [f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.INPUT_FILE='{requests}'",
                f"--gin.OUTPUT_FILE='{tmp_path / 'out.jsonl'}'",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 48}"]
  infer_gin = "--gin_file=runs/infer.gin"
  # 'de' is the unseen language: unknown to the checkpoint's feature space.
  assert run_entry(infer_entry, infer_gin, *infer_args) == 1
  assert "unknown value 'de' for feature type 'lang'" in capsys.readouterr().err
  assert not (tmp_path / "out.jsonl").exists()
  assert run_entry(infer_entry, infer_gin, *infer_args, "--gin.UNKNOWN_FEATURES='drop'") == 0
  results = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["inputs"] for r in results] == ["ordinal fr: 12", "cardinal de: 7"]
  assert all(isinstance(r["prediction"], str) and r["score"] <= 0 for r in results)
  assert not any(r["truncated"] for r in results)


USER_TASKS = """
from flix.data.offline import OfflineConfig
from flix.data.offline_tasks import register_offline

REGISTRATION = register_offline(
    OfflineConfig(tasks=('cardinal',), langs=('en', 'fr'), unseen_langs=(), n_train=8,
                  n_validation=2, n_test=2, input_length=24, target_length=48),
    prefix='user_tasks')
"""


@pytest.fixture
def user_tasks_module(tmp_path, monkeypatch):
  """tmp_path/flix_user_tasks.py (USER_TASKS) on sys.path, not yet imported; its tasks are
  unregistered afterwards."""
  import seqio
  from flix.data import offline_tasks
  (tmp_path / "flix_user_tasks.py").write_text(USER_TASKS)
  monkeypatch.syspath_prepend(str(tmp_path))
  offline_tasks._REGISTERED.pop("user_tasks", None)  # pylint: disable=protected-access
  assert "user_tasks.train" not in seqio.MixtureRegistry.names()  # Until the module is imported.
  yield "flix_user_tasks"
  module = sys.modules.pop("flix_user_tasks", None)
  if module is not None:
    module.REGISTRATION.unregister()
    offline_tasks._REGISTERED.pop("user_tasks", None)  # pylint: disable=protected-access


def test_mixture_or_task_module_import_registers_its_tasks(user_tasks_module):
  """MIXTURE_OR_TASK_MODULE's library half (train, eval and infer call it first; the run end to
  end is second tier): importing the named module registers its tasks and mixtures, and a value
  that is not a module name is refused by name."""
  import seqio
  from flix.data import pairs
  pairs.import_task_modules([user_tasks_module])
  assert {"user_tasks.train", "user_tasks.eval"} <= set(seqio.MixtureRegistry.names())
  pairs.check_registered("user_tasks.train")
  with pytest.raises(ValueError, match=r"must be a module name or a list of them, got \[3\]"):
    pairs.import_task_modules([3])


def test_mixture_or_task_module_registers_the_users_task(user_tasks_module, tmp_path, capsys):
  """T5X's MIXTURE_OR_TASK_MODULE: train and eval name only a user's module and its task."""
  from flix import eval as eval_entry, infer as infer_entry
  tiny = ["--gin.T5Config.emb_dim=32", "--gin.T5Config.num_heads=2", "--gin.T5Config.head_dim=8",
          "--gin.T5Config.mlp_dim=64", "--gin.T5Config.num_encoder_layers=1",
          "--gin.T5Config.num_decoder_layers=1"]
  common = ["--gin.MIXTURE_OR_TASK_MODULE=['flix_user_tasks']",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 48}", "--gin.BATCH_SIZE=8"]
  model_dir = tmp_path / "run"
  assert run_entry(train_entry, "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                   *tiny,
                   *common, f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.MIXTURE_OR_TASK_NAME='user_tasks.train'", "--gin.TRAIN_STEPS=2",
                   "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.METHOD='lora'") == 0, (
                       capsys.readouterr().err[-2000:])
  assert [s for s, _ in step_dirs(str(model_dir))] == [2]
  # runs/finetune.gin's PACK 'auto' packs a LoRA run (no feature dropout: exact).
  assert "PACK = True ('auto': method 'lora' without feature dropout" in capsys.readouterr().err
  meta = json.loads((model_dir / "checkpoint_2" / "train_state.json").read_text())
  assert meta["pack"] is True
  out = tmp_path / "eval"
  assert run_entry(eval_entry, "--gin_file=runs/eval.gin", *common, "--gin.EVAL_EXAMPLES=1",
                   f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
                   f"--gin.EVAL_OUTPUT_DIR='{out}'",
                   "--gin.MIXTURE_OR_TASK_NAME='user_tasks.eval'") == 0, (
                       capsys.readouterr().err[-2000:])
  assert sorted(os.listdir(out / "predictions")) == [
      "user_tasks.cardinal.en.jsonl", "user_tasks.cardinal.fr.jsonl"]
  capsys.readouterr()
  assert run_entry(infer_entry, "--gin_file=runs/infer.gin",
                   "--gin.MIXTURE_OR_TASK_MODULE='nope_mod'",
                   "--gin.CHECKPOINT_PATH='unused'", "--gin.INPUT_FILE='unused'",
                   "--gin.OUTPUT_FILE='unused'",
                   "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 48}") == 1
  assert "MIXTURE_OR_TASK_MODULE 'nope_mod' could not be imported" in (
      capsys.readouterr().err.strip().splitlines()[-1])
