"""Everything gin files may name: imported once by the entry points."""

import gin
import seqio

from flix.data import (morphology_tasks, offline, offline_tasks,  # noqa: F401 (they register
                       xtreme_up)  # their gin configurables themselves)
from flix import evaluation, inference  # noqa: F401 (evaluate_checkpoint, infer_file)
from flix.models import decoder, model, t5  # noqa: F401 (model: EncoderDecoderModel, ...)
from flix.training import loop, optimizers, partitioning, periodic_eval, step  # noqa: F401

gin.external_configurable(t5.T5Config, "T5Config")
gin.external_configurable(decoder.DecoderConfig, "DecoderConfig")
gin.external_configurable(offline.OfflineConfig, "OfflineConfig")
gin.external_configurable(offline_tasks.register_offline, "register_offline")
gin.external_configurable(step.StepConfig, "StepConfig")
# VOCABULARY = @seqio.ByteVocabulary() / @seqio.SentencePieceVocabulary(), as in T5X's gin files.
gin.external_configurable(seqio.ByteVocabulary, module="seqio")
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")
