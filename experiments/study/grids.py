"""The study's grids: data per seed (random hold-out), base model, training budget.

Both grids draw their hold-out from the seed: `unseen_pairs` cells by
`flix.data.pairs.random_holdout` (every task and seen language still trained in >= 2 cells) and
`unseen_langs` languages whose language family keeps a trained member (so that a derived
`family` adapter exists for them). The base model is pretrained once per grid on the grid's
unlabelled train-split texts (inputs and targets as separate texts, every cell), independent of
the seed, and cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from flix.data import languages
from flix.data.morphology import MorphologyConfig
from flix.data.offline import OfflineConfig
from flix.data.pairs import HoldOutSpec
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


@dataclasses.dataclass(frozen=True)
class Grid:
  """A task x language grid and how the study uses it."""

  name: str
  model: T5Config
  budget: Budget
  unseen_pairs: int
  unseen_langs: int

  def key(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self), default=str))

  @property
  def langs(self) -> tuple[str, ...]:
    """The grid's languages (unseen languages are drawn from them)."""
    raise NotImplementedError

  def register(self, seed: int, derived: Sequence[str] = ()):
    """The registration (space, holdout, train/eval mixtures, task_feature_lengths)."""
    raise NotImplementedError

  def register_pretraining(self):
    """The grid's registration with the base's pretraining task (`.pretrain`)."""
    raise NotImplementedError

  def held_out_langs(self, seed: int) -> tuple[str, ...]:
    return draw_unseen_langs(self.langs, self.unseen_langs, seed)


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

  def config(self, seed: int) -> OfflineConfig:
    return dataclasses.replace(self.offline, holdout="random", holdout_seed=seed,
                               holdout_pairs=self.unseen_pairs,
                               unseen_langs=self.held_out_langs(seed))

  def register(self, seed: int, derived: Sequence[str] = ()):
    from flix.data import offline, offline_tasks  # pylint: disable=import-outside-toplevel
    config = self.config(seed)
    space = offline.generate(config).feature_space(derived=tuple(derived))
    return offline_tasks.register_offline(
        config, space, prefix=_prefix(self.name, seed, derived))

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

  def register(self, seed: int, derived: Sequence[str] = ()):
    holdout = HoldOutSpec("random", seed=seed, n_pairs=self.unseen_pairs,
                          unseen_langs=self.held_out_langs(seed))
    return self._register(_prefix(self.name, seed, derived), holdout=holdout,
                          derived=tuple(derived))

  def register_pretraining(self):
    return self._register(f"study_{self.name}_base", holdout=HoldOutSpec("none"),
                          pretrain_objective="reconstruction")


def _prefix(grid: str, seed: int, derived: Sequence[str]) -> str:
  return f"study_{grid}_s{seed}" + "".join(f"_{d}" for d in derived)


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
