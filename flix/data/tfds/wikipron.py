"""TFDS builder: WikiPron pronunciation dictionaries (grapheme to phoneme).

One config per release file (`{lang}_{script}[_{dialect}]_{broad|narrow}.tsv`, e.g.
`tur_latn_broad`); one split, `train`, holding the whole file (WikiPron has no split: flix makes
its own, `flix.data.morphology`). One example per line: `word<TAB>IPA segments separated by
single spaces`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from flix.data.tfds import release

FIELDS = ("word", "pronunciation")
LAYOUT = "{name}.tsv (word<TAB>space-separated IPA segments lines)"


def config(name: str) -> tfds.core.BuilderConfig:
  return tfds.core.BuilderConfig(name=name, description=f"WikiPron: {name}")


def files_for(manual_dir: str, lang: str) -> tuple[str, ...]:
  """Release file names (without .tsv) of language `lang` in `manual_dir`, sorted."""
  if not os.path.isdir(manual_dir):
    return ()
  return tuple(sorted(n[:-4] for n in os.listdir(manual_dir)
                      if n.endswith(".tsv") and n.split("_")[0] == lang))


class Wikipron(tfds.core.GeneratorBasedBuilder):
  """One WikiPron pronunciation file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "WikiPron scrape files, parsed strictly."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Clone github.com/CUNY-CL/wikipron (the data README of flix names the commit) and pass its
  `data/scrape/tsv` directory (or a directory with some of its `{name}.tsv` files) as the
  manual_dir. Licence: Wiktionary's data, CC BY-SA 3.0.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "word": tfds.features.Text(), "pronunciation": tfds.features.Text(),
            "line": tfds.features.Scalar(np.int32)}),
        homepage="https://github.com/CUNY-CL/wikipron",
        citation="Lee et al. 2020, Massively Multilingual Pronunciation Modeling with WikiPron.")

  def _split_generators(self, dl_manager):
    name = self.builder_config.name
    (path,) = release.require_files(os.fspath(dl_manager.manual_dir), [f"{name}.tsv"],
                                    LAYOUT.format(name=name))
    return {"train": self._generate_examples(path)}

  def _generate_examples(self, path):
    for number, (word, pronunciation) in release.tsv_lines(path, FIELDS):
      if "  " in pronunciation:
        raise release.ReleaseFormatError(
            f"{path}:{number}: IPA segments must be separated by single spaces, got "
            f"{pronunciation!r}")
      yield number, {"word": word, "pronunciation": pronunciation, "line": number}
