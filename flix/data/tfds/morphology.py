"""TFDS builder: the morphology grid's tasks of one language, derived from the two releases.

`flix_morphology/{lang}-{digest}` reads the SIGMORPHON 2023 and WikiPron datasets (building them
from `manual_dir/sigmorphon2023` and `manual_dir/wikipron` first) and writes the derived tasks
(`flix.data.morphology`): splits `{task}_{split}`, e.g. `inflect_train`, `g2p_test`; features
`source`, `target`, `references` (every accepted target), `paradigms`. The digest hashes the
`MorphologyConfig` and the WikiPron file, so other settings are other cached datasets.
`info.metadata` holds the counts and the drops with their reasons.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import tensorflow_datasets as tfds

from flix.data import morphology
from flix.data.tfds import release, sigmorphon2023, wikipron

SIGMORPHON_DIR = "sigmorphon2023"
WIKIPRON_DIR = "wikipron"


@dataclasses.dataclass(eq=False)
class MorphologyBuilderConfig(tfds.core.BuilderConfig):
  """lang: ISO 639-3 code; wikipron_file: release file name without .tsv, or None (no g2p)."""

  lang: str = ""
  wikipron_file: str | None = None
  morph: morphology.MorphologyConfig = dataclasses.field(
      default_factory=morphology.MorphologyConfig)


def config(lang: str, wikipron_file: str | None,
           morph: morphology.MorphologyConfig = morphology.MorphologyConfig()
           ) -> MorphologyBuilderConfig:
  """The config of `lang`; its name carries a digest of the settings and the WikiPron file."""
  digest = hashlib.sha256(f"{morph.digest()}|{wikipron_file}".encode()).hexdigest()[:10]
  return MorphologyBuilderConfig(name=f"{lang}-{digest}", lang=lang,
                                 wikipron_file=wikipron_file, morph=morph,
                                 description=f"{lang}: {morph}, WikiPron {wikipron_file}")


def read_release(builder: tfds.core.DatasetBuilder, manual_dir: str, split: str) -> list[dict]:
  """Every example of `split` of a release builder (built from `manual_dir` if needed)."""
  release.prepare(builder, manual_dir)
  rows = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  out = [{k: v.decode("utf-8") if isinstance(v, bytes) else int(v) for k, v in r.items()}
         for r in rows]
  return sorted(out, key=lambda r: r["line"])  # File order.


class FlixMorphology(tfds.core.GeneratorBasedBuilder):
  """inflect / analyze / g2p examples of one language (see `flix.data.morphology`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "inflect, analyze, g2p; leakage-free g2p split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  The manual_dir holds `{SIGMORPHON_DIR}/` (the SIGMORPHON 2023 part-1 files, see the
  sigmorphon2023_inflection builder) and `{WIKIPRON_DIR}/` (WikiPron `.tsv` files, see the
  wikipron builder), e.g. the directory flix's tests read from `../shared/data/morphology`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "source": tfds.features.Text(), "target": tfds.features.Text(),
            "references": tfds.features.Sequence(tfds.features.Text()),
            "paradigms": tfds.features.Sequence(tfds.features.Text())}),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    cfg: MorphologyBuilderConfig = self.builder_config
    manual = os.fspath(dl_manager.manual_dir)
    data_dir = os.fspath(self.data_dir_root)
    sig_dir = os.path.join(manual, SIGMORPHON_DIR)
    sig = sigmorphon2023.Sigmorphon2023Inflection(config=sigmorphon2023.config(cfg.lang),
                                                  data_dir=data_dir)
    triples = {split: [morphology.Triple(r["lemma"], r["features"], r["form"])
                       for r in read_release(sig, sig_dir, split)]
               for split in morphology.SPLITS}
    pronunciations = None
    if cfg.wikipron_file is not None:
      wiki = wikipron.Wikipron(config=wikipron.config(cfg.wikipron_file), data_dir=data_dir)
      pronunciations = [(r["word"], r["pronunciation"])
                        for r in read_release(wiki, os.path.join(manual, WIKIPRON_DIR),
                                              "train")]
    data = morphology.derive_language(triples, pronunciations, cfg.morph)
    self.info.metadata.update({"lang": cfg.lang, "wikipron_file": cfg.wikipron_file,
                               "config": dataclasses.asdict(cfg.morph),
                               "counts": data.counts(), "dropped": data.dropped})
    logging.info("flix_morphology %s: %s", cfg.name, data.counts())
    return {f"{task}_{split}": self._generate_examples(examples)
            for task, splits in data.examples.items() for split, examples in splits.items()}

  def _generate_examples(self, examples):
    for i, example in enumerate(examples):
      yield i, example.as_dict()
