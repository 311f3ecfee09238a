"""TFDS builder: the SIGMORPHON-UniMorph 2023 shared task 0, part 1 (morphological inflection).

One config per language (ISO 639-3 code); splits train / validation / test from the release's
`{lang}.trn`, `{lang}.dev`, `{lang}.tst` (the gold files, not `*.covered.*`), one example per
line: `lemma<TAB>features<TAB>form` (UniMorph 4 features, e.g. `N;ABL(PL;PSS(2,PL))`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from flix.data.tfds import release

RELEASE_SPLITS = {"train": "trn", "validation": "dev", "test": "tst"}
LANGUAGES = ("bel", "dan", "deu", "eng", "fin", "fra", "hun", "hye", "ita", "kat", "mkd", "spa",
             "tur")
FIELDS = ("lemma", "features", "form")
LAYOUT = "{lang}.trn, {lang}.dev and {lang}.tst (lemma<TAB>features<TAB>form lines)"


def config(lang: str) -> tfds.core.BuilderConfig:
  """The builder config of `lang` (any language with release files, not only LANGUAGES)."""
  for c in Sigmorphon2023Inflection.BUILDER_CONFIGS:
    if c.name == lang:
      return c
  return tfds.core.BuilderConfig(name=lang, description=f"SIGMORPHON 2023 inflection: {lang}")


def languages(manual_dir: str) -> tuple[str, ...]:
  """Languages with a complete set of release files in `manual_dir`, sorted."""
  if not os.path.isdir(manual_dir):
    return ()
  names = set(os.listdir(manual_dir))
  found = {n.split(".")[0] for n in names if n.endswith(".trn")}
  return tuple(sorted(l for l in found
                      if all(f"{l}.{ext}" in names for ext in RELEASE_SPLITS.values())))


class Sigmorphon2023Inflection(tfds.core.GeneratorBasedBuilder):
  """SIGMORPHON-UniMorph 2023 inflection triples of one language."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The 2023 release, parsed strictly."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=l, description=f"SIGMORPHON 2023: {l}")
                     for l in LANGUAGES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Clone github.com/sigmorphon/2023InflectionST (the data README of flix names the commit) and
  pass its `part1/data` directory as the manual_dir: it holds `{lang}.trn`, `{lang}.dev` and
  `{lang}.tst` for every language (use the gold files, not `*.covered.*`). Licence: UniMorph,
  CC BY-SA 3.0.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "lemma": tfds.features.Text(), "features": tfds.features.Text(),
            "form": tfds.features.Text(), "line": tfds.features.Scalar(np.int32)}),
        homepage="https://github.com/sigmorphon/2023InflectionST",
        citation="Goldman et al. 2023, SIGMORPHON-UniMorph 2023 Shared Task 0: Typologically "
                 "Diverse Morphological Inflection.")

  def _split_generators(self, dl_manager):
    lang = self.builder_config.name
    names = [f"{lang}.{ext}" for ext in RELEASE_SPLITS.values()]
    paths = release.require_files(os.fspath(dl_manager.manual_dir), names,
                                  LAYOUT.format(lang=lang))
    return {split: self._generate_examples(path)
            for split, path in zip(RELEASE_SPLITS, paths)}

  def _generate_examples(self, path):
    for number, (lemma, features, form) in release.tsv_lines(path, FIELDS):
      yield number, {"lemma": lemma, "features": features, "form": form, "line": number}
