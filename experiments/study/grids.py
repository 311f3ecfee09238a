"""The study's grids: data per seed (random hold-out), base model, training budget.

`offline` and `morph` (runs 1-12 of docs/study.md; their keys are unchanged) draw their
hold-out from the seed: `unseen_pairs` cells by `flix.data.pairs.random_holdout` (every task and
seen language still trained in >= 2 cells) and `unseen_langs` languages whose language family
keeps a trained member (so that a derived `family` adapter exists for them); validation and
test evaluate the same held-out cells. `offline2` and `morph2` (issue 35) draw distinct held-out
cells for validation and for test, with 200 examples per held-out cell
(`experiments.study.holdouts`): `offline2` is the offline benchmark without `country` (0 on
every cell, trained ones included: its test codes never occur in training), unseen pairs only
of tasks whose words the language's other tasks carry; `morph2` holds out only inflection
cells. The base model is pretrained once per grid on the grid's unlabelled train-split texts
(inputs and targets as separate texts, every cell), independent of the seed, and cached.

A method's data: `register(seed, derived, features, inputs)`; `features` are the method's
non-derived feature types ("task", "lang", "pair": each trained cell, `flix.data.pairs`),
`inputs` "family_script" writes the language's family and script into the input text (offline
grids only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import numpy as np

from experiments.study import holdouts
from experiments.study.holdouts import SplitDesign, SplitHoldOut
from flix.data import languages
from flix.data.morphology import MorphologyConfig
from flix.data.offline import OfflineConfig
from flix.data.pairs import PAIR_FEATURE, HoldOutSpec
from flix.models.t5 import T5Config

# The small byte-level T5.1.1 of the study and the demo (d_model 128, 3 + 3 layers): learns to
# copy in minutes. TINY_T5: the --quick runs.
SMALL_T5 = T5Config(emb_dim=128, num_heads=2, head_dim=64, mlp_dim=512, num_encoder_layers=3,
                    num_decoder_layers=3, dropout_rate=0.0)
TINY_T5 = T5Config(emb_dim=64, num_heads=1, head_dim=64, mlp_dim=256, num_encoder_layers=2,
                   num_decoder_layers=2, dropout_rate=0.0)


@dataclasses.dataclass(frozen=True)
class Budget:
  """Training and evaluation settings shared by every method of a grid (part of the cache key).

  eval_examples: examples per cell and split decoded (None: all of them).
  schedule: "constant", or "linear" decay to 0 over the fine-tuning steps (after no warmup).
  """

  pretrain_steps: int = 3000
  pretrain_learning_rate: float = 1e-3
  finetune_steps: int = 1000
  finetune_learning_rate: float = 1e-3
  schedule: str = "constant"
  batch_size: int = 32
  eval_examples: int | None = None
  eval_batch_size: int = 64


FEATURES = ("task", "lang", PAIR_FEATURE)  # A method's possible non-derived feature types.
INPUTS = ("", "family_script")  # What a method's input text carries besides task and language.


@dataclasses.dataclass(frozen=True)
class Grid:
  """A task x language grid and how the study uses it.

  Attributes:
    unseen_pairs, unseen_langs: held-out cells per seed (with a `design`: both splits' totals,
      for reports; the design decides).
    design: distinct validation and test held-out cells (`holdouts.SplitDesign`); None: the
      first grids' hold-out, shared by both splits.
  """

  name: str
  model: T5Config
  budget: Budget
  unseen_pairs: int
  unseen_langs: int
  design: SplitDesign | None = None

  def key(self) -> dict[str, Any]:
    key = json.loads(json.dumps(dataclasses.asdict(self), default=str))
    if self.design is None:
      del key["design"]  # The first grids' keys, as archived (runs 1-12).
    return key

  @property
  def langs(self) -> tuple[str, ...]:
    """The grid's languages (unseen languages are drawn from them)."""
    raise NotImplementedError

  def register(self, seed: int, derived: Sequence[str] = (),
               features: Sequence[str] = ("task", "lang"), inputs: str = ""):
    """The registration (space, holdout, train/eval mixtures, task_feature_lengths) of a
    method whose space has `features` and `derived` types and whose inputs carry `inputs`."""
    raise NotImplementedError

  def register_pretraining(self):
    """The grid's registration with the base's pretraining task (`.pretrain`)."""
    raise NotImplementedError

  def held_out_langs(self, seed: int) -> tuple[str, ...]:
    return draw_unseen_langs(self.langs, self.unseen_langs, seed)

  def split_holdout(self, seed: int) -> SplitHoldOut | None:
    """The seed's distinct validation and test held-out cells; None without a `design`."""
    return None


OFFLINE_GRIDS = ("offline", "offline2")  # The grids whose data a method may shape.


def check_method_data(grid: str, derived: Sequence[str], features: Sequence[str],
                      inputs: str, offline: bool | None = None) -> None:
  """Raises ValueError for a method's data that the grid named `grid` cannot build.

  offline: whether the grid is an offline grid (default: its name is in OFFLINE_GRIDS).
  """
  unknown = [f for f in features if f not in FEATURES]
  if unknown or len(set(features)) != len(features):
    raise ValueError(f"features {list(features)}: expected distinct types from {FEATURES}")
  if derived and "lang" not in features:
    raise ValueError(f"derived types {list(derived)} are derived from 'lang', which the "
                     f"features {list(features)} lack")
  if inputs not in INPUTS:
    raise ValueError(f"inputs {inputs!r} unknown; expected one of {INPUTS}")
  offline = grid in OFFLINE_GRIDS if offline is None else offline
  if not offline and (inputs or tuple(features) != ("task", "lang")):
    raise ValueError(f"the {grid} grid builds only task + language spaces with plain inputs; "
                     f"features {list(features)} and inputs {inputs!r} need an offline grid "
                     f"{list(OFFLINE_GRIDS)}")


def draw_unseen_langs(langs: Sequence[str], n: int, seed: int) -> tuple[str, ...]:
  """`n` languages drawn with `seed` among those whose family (language table) has another
  member in `langs` that stays trained; sorted."""
  table = languages.table()
  family = {l: table[l]["family"] for l in langs if l in table}
  chosen: list[str] = []
  for i in np.random.default_rng([seed, 104729]).permutation(len(langs)):
    if len(chosen) == n:
      break
    lang = langs[i]
    if lang not in family:
      continue
    siblings = [l for l in langs if family.get(l) == family[lang] and l != lang
                and l not in chosen]
    if siblings:
      chosen.append(lang)
  return tuple(sorted(chosen))


@dataclasses.dataclass(frozen=True)
class OfflineGrid(Grid):
  """The embedded offline benchmark, 7 tasks x 12 languages (82 present cells)."""

  offline: OfflineConfig = OfflineConfig(prefix="task_lang", holdout="none", unseen_langs=())

  @property
  def langs(self) -> tuple[str, ...]:  # type: ignore[override]
    return self.offline.langs

  def config(self, seed: int, inputs: str = "") -> OfflineConfig:
    prefix = {"": self.offline.prefix, "family_script": "task_lang_family_script"}[inputs]
    split = self.split_holdout(seed)
    if split is None:
      return dataclasses.replace(self.offline, holdout="random", holdout_seed=seed,
                                 holdout_pairs=self.unseen_pairs,
                                 unseen_langs=self.held_out_langs(seed), prefix=prefix)
    return dataclasses.replace(
        self.offline, holdout="explicit", prefix=prefix,
        unseen_pairs=tuple((p.task, p.lang) for p in sorted(split.holdout.unseen_pairs)),
        unseen_langs=tuple(sorted(split.holdout.unseen_langs)))

  def split_holdout(self, seed: int) -> SplitHoldOut | None:
    return None if self.design is None else _offline_split_holdout(self, seed)

  def register(self, seed: int, derived: Sequence[str] = (),
               features: Sequence[str] = ("task", "lang"), inputs: str = ""):
    from flix.data import offline, offline_tasks  # pylint: disable=import-outside-toplevel
    check_method_data(self.name, derived, features, inputs, offline=True)
    config = self.config(seed, inputs)
    data = offline.generate(config)
    if tuple(features) == ("task", "lang"):
      space = data.feature_space(derived=tuple(derived))
    else:
      space = _space(data, features, derived)
    return offline_tasks.register_offline(
        config, space, prefix=_prefix(self.name, seed, derived, features, inputs))

  def register_pretraining(self):
    from flix.data import offline_tasks  # pylint: disable=import-outside-toplevel
    return offline_tasks.register_offline(
        self.offline, prefix=f"study_{self.name}_base", pretrain_objective="reconstruction",
        pretrain_fields=("inputs", "targets"))


@dataclasses.dataclass(frozen=True)
class MorphGrid(Grid):
  """SIGMORPHON 2023 inflection / analysis + WikiPron g2p, 3 tasks x 13 languages (38 cells)."""

  morph_dir: str = ""
  morph: MorphologyConfig = MorphologyConfig()
  morph_langs: tuple[str, ...] = ("bel", "dan", "deu", "eng", "fin", "fra", "hun", "hye",
                                  "ita", "kat", "mkd", "spa", "tur")
  tfds_data_dir: str | None = None

  def key(self) -> dict[str, Any]:
    key = super().key()
    del key["morph_dir"], key["tfds_data_dir"]  # Where the files are does not change results.
    return key

  @property
  def langs(self) -> tuple[str, ...]:  # type: ignore[override]
    return self.morph_langs

  def _register(self, name: str, **kwargs):
    from flix.data import morphology_tasks  # pylint: disable=import-outside-toplevel
    return morphology_tasks.register_morphology_experiment(
        self.morph_dir, langs=self.morph_langs, config=self.morph, name=name,
        tfds_data_dir=self.tfds_data_dir, **kwargs)

  def register(self, seed: int, derived: Sequence[str] = (),
               features: Sequence[str] = ("task", "lang"), inputs: str = ""):
    check_method_data(self.name, derived, features, inputs, offline=False)
    split = self.split_holdout(seed)
    if split is None:
      holdout = HoldOutSpec("random", seed=seed, n_pairs=self.unseen_pairs,
                            unseen_langs=self.held_out_langs(seed))
    else:
      holdout = HoldOutSpec("explicit", unseen_pairs=split.holdout.unseen_pairs,
                            unseen_langs=tuple(sorted(split.holdout.unseen_langs)))
    return self._register(_prefix(self.name, seed, derived), holdout=holdout,
                          derived=tuple(derived))

  def split_holdout(self, seed: int) -> SplitHoldOut | None:
    if self.design is None:
      return None
    present = [t.pair for t in self.register_pretraining().tasks]  # Every cell, none held out.
    return holdouts.draw(self.design, self.langs, present, seed)

  def register_pretraining(self):
    return self._register(f"study_{self.name}_base", holdout=HoldOutSpec("none"),
                          pretrain_objective="reconstruction")


def _space(data, features: Sequence[str], derived: Sequence[str]):
  """A method's FeatureSpace over the offline data: `features` among task, lang (the seen
  languages) and pair (the trained cells), plus `derived` types of lang."""
  from flix.features import FeatureSpace  # pylint: disable=import-outside-toplevel
  config, holdout = data.config, data.holdout
  values = {"task": config.tasks, "lang": config.seen_langs,
            PAIR_FEATURE: [p.key for p in data.pairs if holdout.is_trained(p)]}
  return FeatureSpace.build({f: values[f] for f in features},
                            derived=languages.derived_features(config.langs, derived)
                            if derived else None)


@functools.lru_cache(maxsize=4)
def _offline_coverages(config: OfflineConfig) -> dict:
  from flix.data import offline  # pylint: disable=import-outside-toplevel
  return holdouts.coverages(offline.generate(config).examples)


@functools.lru_cache(maxsize=64)
def _offline_split_holdout(grid: "OfflineGrid", seed: int) -> SplitHoldOut:
  coverages = _offline_coverages(grid.offline)
  return holdouts.draw(grid.design, grid.langs, list(coverages), seed, coverages)


def _prefix(grid: str, seed: int, derived: Sequence[str],
            features: Sequence[str] = ("task", "lang"), inputs: str = "") -> str:
  """The seqio name prefix of a seed's registration for a method's data (the first grids'
  names unchanged)."""
  name = f"study_{grid}_s{seed}" + "".join(f"_{d}" for d in derived)
  if tuple(features) != ("task", "lang"):
    name += "_f_" + "_".join(features)
  return name + (f"_in_{inputs}" if inputs else "")


def offline_grid(quick: bool = False) -> OfflineGrid:
  if quick:
    return OfflineGrid("offline", TINY_T5, Budget(pretrain_steps=60, finetune_steps=40,
                                                  batch_size=16, eval_batch_size=32),
                       unseen_pairs=2, unseen_langs=1,
                       offline=OfflineConfig(tasks=("month_year", "long_date", "cardinal"),
                                             langs=("en", "fr", "de", "nl"),
                                             prefix="task_lang", n_train=32, n_validation=6,
                                             n_test=6, input_length=32, target_length=32,
                                             holdout="none", unseen_langs=()))
  # Every cell has 32 validation and 32 test examples: decoded in batches of 32.
  return OfflineGrid("offline", SMALL_T5, Budget(eval_batch_size=32), unseen_pairs=8,
                     unseen_langs=1)


# offline2's tasks: the offline benchmark's without `country`. Its unseen pairs: the tasks whose
# language-specific words other tasks of the language carry (cardinal <-> ordinal numerals,
# long_date <-> month_year month names) or that have none (decimal); never currency (its
# "euro" / "cent" words and joiners occur in no other task: all 6 of its unseen cells in runs
# 1-12 were 0 for every method). One unseen pair per task and split, at most one per language.
OFFLINE2_TASKS = ("cardinal", "ordinal", "currency", "long_date", "month_year", "decimal")
OFFLINE2_DESIGN = SplitDesign(pair_tasks=("cardinal", "ordinal", "long_date", "month_year",
                                          "decimal"),
                              unseen_langs=1, min_coverage=0.85, heldout_examples=200)


def offline2_grid(quick: bool = False) -> OfflineGrid:
  """The offline benchmark for the pre-registered comparison (issue 35): 6 tasks x 12
  languages (70 cells), per seed 5 + 5 unseen pairs and 1 + 1 unseen languages, distinct for
  validation and test; 200 validation and 200 test examples per cell (held-out cells decode
  all of them, seen cells the first 32); inputs fit in 48 bytes with the family and script
  prefix (`inputs="family_script"`), so every method sees the same examples."""
  if quick:
    return OfflineGrid(
        "offline2", TINY_T5, Budget(pretrain_steps=40, finetune_steps=20, batch_size=16,
                                    eval_examples=4, eval_batch_size=16),
        unseen_pairs=2, unseen_langs=2,
        design=SplitDesign(pair_tasks=("cardinal",), unseen_langs=1, heldout_examples=8),
        offline=OfflineConfig(tasks=("month_year", "cardinal"),
                              langs=("en", "fr", "de", "es", "it", "nl"),
                              prefix="task_lang", n_train=16, n_validation=8, n_test=8,
                              input_length=48, target_length=48, holdout="none",
                              unseen_langs=()))
  return OfflineGrid(
      "offline2", SMALL_T5, Budget(eval_examples=32, eval_batch_size=32), unseen_pairs=10,
      unseen_langs=2, design=OFFLINE2_DESIGN,
      offline=OfflineConfig(tasks=OFFLINE2_TASKS, prefix="task_lang", n_train=300,
                            n_validation=200, n_test=200, input_length=48, target_length=64,
                            holdout="none", unseen_langs=()))


def morph_grid(morph_dir: str, quick: bool = False,
               tfds_data_dir: str | None = None) -> MorphGrid:
  if not os.path.isdir(os.path.join(morph_dir, "sigmorphon2023")):
    raise FileNotFoundError(f"no morphology releases under {morph_dir} (expected sigmorphon2023/ "
                            "and wikipron/, as in ../shared/data/morphology)")
  if quick:
    return MorphGrid("morph", TINY_T5, Budget(pretrain_steps=40, finetune_steps=30,
                                              batch_size=16, eval_examples=6,
                                              eval_batch_size=32),
                     unseen_pairs=1, unseen_langs=1, morph_dir=morph_dir,
                     morph_langs=("bel", "dan", "deu", "tur"), tfds_data_dir=tfds_data_dir)
  return MorphGrid("morph", SMALL_T5, Budget(eval_examples=64),
                   unseen_pairs=6, unseen_langs=2, morph_dir=morph_dir,
                   tfds_data_dir=tfds_data_dir)


# morph2's unseen pairs: inflection only. In runs 3, 8 and 11 every unseen analysis cell (4)
# and all but one g2p cell (8 of 9) were 0 for LoRA and FLix alike (a language's analysis and
# g2p share no output with its other tasks), while no unseen inflection cell was 0 for both.
MORPH2_DESIGN = SplitDesign(pair_tasks=("inflect", "inflect"), unseen_langs=1,
                            heldout_examples=200)


def morph2_grid(morph_dir: str, tfds_data_dir: str | None = None) -> MorphGrid:
  """The morphology grid with distinct validation and test held-out cells (issue 35): per
  seed 2 + 2 unseen inflection pairs (at most one per language) and 1 + 1 unseen languages;
  200 examples per held-out cell, 64 per seen cell."""
  if not os.path.isdir(os.path.join(morph_dir, "sigmorphon2023")):
    raise FileNotFoundError(f"no morphology releases under {morph_dir} (expected sigmorphon2023/ "
                            "and wikipron/, as in ../shared/data/morphology)")
  return MorphGrid("morph2", SMALL_T5, Budget(eval_examples=64), unseen_pairs=4,
                   unseen_langs=2, design=MORPH2_DESIGN, morph_dir=morph_dir,
                   tfds_data_dir=tfds_data_dir)


GRIDS = ("offline", "morph", "offline2", "morph2")
