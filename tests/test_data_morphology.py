"""The morphology grid: strict release parsing (TFDS builders), derived tasks without leakage,
seqio registration over TfdsDataSource, SIGMORPHON-style metrics. Unit tests write small files in
the official formats; the tests at the end read the real releases in ../shared when present."""

import collections
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from flix import gin_utils
from flix.data import metrics, morphology, morphology_tasks, pairs
from flix.data.converter import FlixEncDecFeatureConverter
from flix.data.morphology import MorphologyConfig, Triple
from flix.data.pairs import HoldOutSpec, Pair
from flix.data.tfds import release
from flix.features import INACTIVE
from shared_files import shared_path

tfds.disable_progress_bar()

# Two tiny languages in the official formats. Lemmas are disjoint across splits, as in the
# 2023 release; "x" has a syncretic form (one form, two analyses) in its test split.
SIGMORPHON = {
    "xxa": {"trn": ["walk\tV;PST\twalked", "walk\tV;PRS;3;SG\twalks", "talk\tV;PST\ttalked",
                    "talk\tV;PST\ttalked", "jump\tV;PST\tjumped", "x" * 60 + "\tV;PST\tlong"],
            "dev": ["play\tV;PST\tplayed", "play\tV;PRS;3;SG\tplays"],
            "tst": ["cut\tV;PST\tcut", "cut\tV;V.PTCP;PST\tcut", "cut\tV;PRS;3;SG\tcuts"]},
    "xxb": {"trn": ["gehen\tV;PST\tging", "sehen\tV;PST\tsah"],
            "dev": ["laufen\tV;PST\tlief"],
            "tst": ["rufen\tV;PST\trief"]},
}
WIKIPRON = {"xxa_latn_broad": ["walked\tw ɔ k t", "cut\tk ʌ t", "cuts\tk ʌ t s",
                               "zebra\tz i b ɹ ə", "zebra\tz ɛ b ɹ ə", "apple\tæ p ə l",
                               "berry\tb ɛ ɹ i", "cherry\tt͡ʃ ɛ ɹ i", "date\td eɪ t",
                               "fig\tf ɪ ɡ", "grape\tɡ ɹ eɪ p", "lemon\tl ɛ m ə n"],
            "xxb_latn_broad": ["ging\tɡ ɪ ŋ", "rief\tʁ iː f", "haus\th aʊ s", "maus\tm aʊ s"]}


def write_release(root, sigmorphon=SIGMORPHON, wikipron=WIKIPRON):
  for lang, splits in sigmorphon.items():
    os.makedirs(root / "sigmorphon2023", exist_ok=True)
    for ext, lines in splits.items():
      (root / "sigmorphon2023" / f"{lang}.{ext}").write_text("\n".join(lines) + "\n", "utf-8")
  for name, lines in wikipron.items():
    os.makedirs(root / "wikipron", exist_ok=True)
    (root / "wikipron" / f"{name}.tsv").write_text("\n".join(lines) + "\n", "utf-8")
  return root


@pytest.fixture
def release_dir(tmp_path):
  return write_release(tmp_path / "morph")


def register(release_dir, tmp_path, name, **kwargs):
  kwargs.setdefault("config", MorphologyConfig(max_source_bytes=40, max_target_bytes=40,
                                               g2p_eval=2, g2p_eval_percent=50))
  return morphology_tasks.register_morphology_experiment(
      str(release_dir), tfds_data_dir=str(tmp_path / "tfds"), name=name, **kwargs)


def test_registration_counts_drops_references_and_feature_ids(release_dir, tmp_path):
  reg = register(release_dir, tmp_path, "m_unit", holdout=HoldOutSpec(unseen_pairs=["analyze.xxb"]),
                 pretrain_objective="reconstruction")
  try:
    assert reg.pretrain == pairs.PretrainTask("m_unit.pretrain", "reconstruction",
                                              {"inputs": 48, "targets": 48})  # 40 + EOS -> 48.
    assert reg.pretrain.name in reg.names
    info = reg.info
    assert info["inflect.xxa"]["counts"] == {"train": 4, "validation": 2, "test": 3}
    assert info["inflect.xxa"]["dropped"]["train"] == {"duplicate line": 1, "too long": 1}
    # The syncretic test form 'cut' (V;PST and V;V.PTCP;PST) is one example, two references.
    assert info["analyze.xxa"]["counts"]["test"] == 2
    assert info["analyze.xxa"]["dropped"]["test"] == {"merged into one input's references": 1}
    task = seqio.get_mixture_or_task("m_unit.analyze.xxa")
    examples = list(task.get_dataset(reg.task_feature_lengths, "test", shuffle=False)
                    .as_numpy_iterator())
    refs = {ex["inputs_pretokenized"].decode(): sorted(r.decode() for r in ex["references"])
            for ex in examples}
    assert refs["analyze xxa: cut"] == ["cut | V;PST", "cut | V;V.PTCP;PST"]
    kinds = {t.name: t.kind for t in reg.tasks}
    assert kinds["m_unit.analyze.xxb"] == "unseen_pair" and kinds["m_unit.g2p.xxb"] == "seen_pair"
    space = reg.space
    ids = {t.name: t.feature_ids for t in reg.tasks}
    assert ids["m_unit.g2p.xxb"] == tuple(space.encode({"task": "g2p", "lang": "xxb"}))
    assert "train" not in {t.name: t for t in reg.tasks}["m_unit.analyze.xxb"].num_examples
    batch = next(seqio.get_dataset(
        reg.train_mixture, reg.task_feature_lengths, dataset_split="train", shuffle=True, seed=0,
        num_epochs=None,
        feature_converter=FlixEncDecFeatureConverter(space.n_types)).batch(16).as_numpy_iterator())
    assert batch["feature_ids"].shape == (16, 2)
    assert reg.task_feature_lengths == {"inputs": 56, "targets": 48}  # 40 + 13 + 1, 40 + 1.
  finally:
    reg.unregister()
  assert "m_unit.pretrain" not in seqio.TaskRegistry.names()


def test_g2p_split_follows_paradigms_and_is_seeded():
  triples = {"train": [Triple("walk", "V;PST", "walked")],
             "validation": [Triple("play", "V;PST", "played")],
             "test": [Triple("cut", "V;PST", "cut"), Triple("walk2", "V;PST", "walked")]}
  words = [("walked", "w"), ("played", "p"), ("cut", "c"), ("play", "p l")]
  words += [(f"free{i}", f"f {i}") for i in range(40)]
  config = MorphologyConfig(g2p_eval=5, g2p_eval_percent=50, g2p_train=10, split_seed=3)
  data = morphology.derive_language(triples, words, config)
  side = {ex.source: split for split, exs in data.examples["g2p"].items() for ex in exs}
  assert "walked" not in side  # In a train paradigm (walk) and a test one (walk2): dropped.
  assert data.dropped["g2p"]["train"]["word in train and evaluation paradigms"] == 1
  assert side["played"] == side["play"] == "validation" and side["cut"] == "test"
  assert collections.Counter(side.values()) == {"validation": 5, "test": 5, "train": 10}
  assert data.dropped["g2p"]["train"]["beyond the g2p size caps"] == 44 - 1 - 20
  again = morphology.derive_language(triples, words, config)
  assert again.examples == data.examples
  other = morphology.derive_language(triples, words, MorphologyConfig(
      g2p_eval=5, g2p_eval_percent=50, g2p_train=10, split_seed=4))
  assert {ex.source for ex in other.examples["g2p"]["test"]} != {
      ex.source for ex in data.examples["g2p"]["test"]}


def assert_no_leakage(examples_by_task):
  """No paradigm (lemma) is on the train side of one task and the evaluation side of another."""
  sides = collections.defaultdict(set)
  for splits in examples_by_task.values():
    for split, examples in splits.items():
      for ex in examples:
        for p in ex.paradigms:
          sides[p].add("train" if split == "train" else "eval")
  leaked = sorted(p for p, s in sides.items() if len(s) > 1)
  assert not leaked, leaked[:10]


def test_no_paradigm_on_both_sides():
  lines = SIGMORPHON["xxa"]
  triples = {s: [Triple(*l.split("\t")) for l in lines[ext]]
             for s, ext in (("train", "trn"), ("validation", "dev"), ("test", "tst"))}
  words = [tuple(l.split("\t")) for l in WIKIPRON["xxa_latn_broad"]]
  data = morphology.derive_language(triples, words, MorphologyConfig(g2p_eval=2))
  assert_no_leakage(data.examples)


@pytest.mark.parametrize("line, problem", [
    ("walk\tV;PST", "expected 3 tab-separated fields"),
    ("walk\t\twalked", "field 'features' is empty"),
    ("walk \tV;PST\twalked", "field 'lemma' is empty or has surrounding whitespace"),
])
def test_malformed_sigmorphon_line_names_file_and_line(release_dir, tmp_path, line, problem):
  path = release_dir / "sigmorphon2023" / "xxb.dev"
  path.write_text("laufen\tV;PST\tlief\n" + line + "\n", "utf-8")
  with pytest.raises(release.ReleaseFormatError, match=f"xxb.dev:2: .*{problem}"):
    register(release_dir, tmp_path, "m_bad", langs=["xxb"], tasks=["inflect"])


def test_malformed_wikipron_line_and_missing_files(release_dir, tmp_path):
  (release_dir / "wikipron" / "xxb_latn_broad.tsv").write_text("haus\th  aʊ s\n", "utf-8")
  with pytest.raises(release.ReleaseFormatError, match="xxb_latn_broad.tsv:1: IPA segments"):
    register(release_dir, tmp_path, "m_bad2", langs=["xxb"])
  with pytest.raises(release.ReleaseLayoutError,
                     match=r"languages \['zzz'\] have no SIGMORPHON files .*zzz.trn"):
    register(release_dir, tmp_path, "m_bad3", langs=["zzz"])
  os.remove(release_dir / "sigmorphon2023" / "xxa.tst")
  with pytest.raises(release.ReleaseLayoutError, match=r"languages \['xxa'\] have no"):
    register(release_dir, tmp_path, "m_bad4", langs=["xxa"])


def test_derived_features_for_an_unseen_language(release_dir, tmp_path):
  """eng and deu (Germanic, Latin) train; an unseen Danish cell still gets family and script."""
  sig = {"eng": SIGMORPHON["xxa"], "deu": SIGMORPHON["xxb"], "dan": SIGMORPHON["xxb"]}
  root = write_release(tmp_path / "derived", sig, {})
  reg = morphology_tasks.register_morphology_experiment(
      str(root), tasks=["inflect", "analyze"], holdout=HoldOutSpec(unseen_langs=["dan"]),
      derived=("family", "script"),
      tfds_data_dir=str(tmp_path / "tfds"), name="m_derived",
      config=MorphologyConfig(max_source_bytes=40, max_target_bytes=40))
  try:
    space = reg.space
    assert space.names == ("task", "lang", "family", "script")
    assert space.type("lang").values == ("deu", "eng")
    ids = {t.name: t.feature_ids for t in reg.tasks}
    family, script = space.type("family").values.index("Germanic"), 0
    assert ids["m_derived.inflect.dan"] == (0, INACTIVE, family, script)
    assert {t.name: t.kind for t in reg.tasks}["m_derived.inflect.dan"] == "unseen_language"
  finally:
    reg.unregister()


def test_gin_binds_the_hold_out_as_one_spec():
  """data/morph.gin binds `register_morphology_experiment.holdout = @HoldOutSpec()` from the
  HOLDOUT macros; pairs are written 'task.lang' or ('task', 'lang')."""
  gin_utils.parse_gin(["experiments/morph_flix.gin"], [
      "MODEL_DIR = '/tmp/m'", "TRAIN_STEPS = 1", "INITIAL_CHECKPOINT_PATH = None",
      "MORPH_DIR = '/tmp/d'", "HOLDOUT = 'random'", "HOLDOUT_SEED = 3", "HOLDOUT_PAIRS = 2",
      "UNSEEN_LANGS = ['dan']"], [])
  try:
    ref = gin.query_parameter("register_morphology_experiment.holdout")
    assert (ref.configurable.name, ref.evaluate) == ("HoldOutSpec", True)
    spec = HoldOutSpec()  # As gin builds it for the registration.
  finally:
    gin.clear_config()
  assert spec == HoldOutSpec("random", unseen_langs=["dan"], seed=3, n_pairs=2)
  assert HoldOutSpec(unseen_pairs=["g2p.tur", ("inflect", "dan")]).unseen_pairs == {
      Pair("g2p", "tur"), Pair("inflect", "dan")}


def test_metrics_as_the_shared_tasks_define_them():
  m = metrics.exact_match_and_levenshtein([["cut | V;PST", "cut | V;V.PTCP;PST"], "walks"],
                                          ["cut | V;V.PTCP;PST", "walk"])
  assert m == {"exact_match": 50.0, "levenshtein": 0.5}
  g = metrics.word_and_phone_error_rates([["z i b ɹ ə", "z ɛ b ɹ ə"], "k ʌ t"],
                                         ["z ɛ b ɹ ə", "k ʌ"])
  assert g["wer"] == 50.0 and g["exact_match"] == 50.0
  assert g["per"] == pytest.approx(100.0 * 1 / 8)  # 0 edits of 5 + 1 edit of 3 segments.
  assert morphology_tasks.references_postprocessor(
      "x", example={"references": np.array([b"a", b"b"])}, is_target=True) == ["a", "b"]


# -- the real releases in ../shared ---------------------------------------------------------------
REAL_LANGS = ("tur", "dan")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  root = shared_path("data", "morphology")
  data_dir = tmp_path_factory.mktemp("tfds_real")
  reg = morphology_tasks.register_morphology_experiment(
      root, langs=REAL_LANGS, holdout=HoldOutSpec("explicit", unseen_pairs=[("g2p", "tur")]),
      tfds_data_dir=str(data_dir), name="m_real")
  yield reg, data_dir
  reg.unregister()


def test_real_release_counts_and_leakage(real):
  reg, data_dir = real
  assert {f"{t.pair.task}.{t.pair.lang}" for t in reg.tasks} == {
      f"{t}.{l}" for t in morphology.TASKS for l in REAL_LANGS}
  # The shared task's own split sizes, less what is dropped (long Turkish lines, syncretism).
  assert reg.info["inflect.dan"]["counts"] == {"train": 10000, "validation": 1000, "test": 1000}
  assert reg.info["inflect.tur"]["counts"]["train"] == 10000 - reg.info["inflect.tur"][
      "dropped"]["train"]["too long"]
  for lang in REAL_LANGS:
    for task in morphology.TASKS:
      counts = reg.info[f"{task}.{lang}"]["counts"]
      assert counts["train"] > 1000 and 300 < counts["validation"] <= 1000, (task, lang, counts)
  for t in reg.tasks:  # Built into the given TFDS data dir, read through TfdsDataSource.
    assert isinstance(t.task.source, seqio.TfdsDataSource)
    assert t.task.source.tfds_dataset.data_dir.startswith(str(data_dir))
  for lang in REAL_LANGS:
    examples = {}
    for task in morphology.TASKS:
      source = seqio.get_mixture_or_task(f"m_real.{task}.{lang}").source
      builder = source.tfds_dataset.builder
      examples[task] = {s: [morphology.MorphExample(
          r["source"].decode(), r["target"].decode(), tuple(x.decode() for x in r["references"]),
          tuple(x.decode() for x in r["paradigms"]))
          for r in tfds.as_numpy(builder.as_dataset(split=f"{task}_{s}"))]
          for s in morphology.SPLITS}
    assert_no_leakage(examples)


@pytest.mark.slow
def test_real_release_trains_and_evaluates(real, tmp_path):
  from flix.evaluation import evaluate
  from flix.models.model import make_model
  from flix.training import loop
  import tiny
  reg, _ = real
  model_dir = str(tmp_path / "run")
  config = tiny.t5_config(vocab_size=384)
  loop.train(model_dir=model_dir, mixture_or_task_name=reg.train_mixture,
             task_feature_lengths=reg.task_feature_lengths, train_steps=2, batch_size=8,
             model_config=config, registration=reg, checkpoint_period=2, log_period=1)
  from flix import checkpoints
  model_config, flix, params = checkpoints.load_model(os.path.join(model_dir, "checkpoint_2"))
  report = evaluate(make_model(model_config, flix), params, reg.eval_mixture, out_dir=None,
                    feature_lengths=reg.task_feature_lengths, batch_size=8,
                    holdout=reg.holdout, split="validation", num_examples=8)
  assert set(report.by_kind) == {"seen_pair", "unseen_pair"}
  assert report.pairs["m_real.g2p.tur"]["kind"] == "unseen_pair"
  for name, values in report.per_pair.items():
    assert 0.0 <= values["exact_match"] <= 100.0, name
    assert ("per" in values) == (".g2p." in name)
  assert report.pairs["m_real.inflect.dan"]["n_examples"] == 8
