"""flix: Featurized Low-Rank Mixtures (FLix) for JAX/Flax.

The public API, imported on first use so that `import flix` stays light (no JAX, TensorFlow or
seqio until a name is used):

    from flix import FeatureSpace, FlixConfig, T5Config, make_model, DecodeOptions

  FeatureSpace                        feature types and values -> ids (`flix.features`)
  UnknownFeatureError                 a feature value the space lacks (`flix.errors`)
  FlixConfig                          the adapters: ranks, scaling, targets (`flix.config`)
  T5Config, DecoderConfig             network configs (`flix.models.t5`, `flix.models.decoder`)
  make_model                          config + adapters -> model object with init_params,
                                      loss_fn, score_batch, predict_batch (`flix.models.model`)
  EncoderDecoderModel, DecoderOnlyModel   the model objects' classes
  DecodeOptions, DecodeResult         greedy / beam / sampling options and results
                                      (`flix.decoding`)
  merge_params                        fold one feature combination into the base kernels
                                      (`flix.merge`)
  freeze_base                         an optax optimizer that trains the adapters only
                                      (`flix.trainable`)
  load_model                          (model config, FlixConfig, params) of a checkpoint
                                      (`flix.checkpoints`)
"""

import importlib
from typing import Any

from flix import platforms

platforms.skip_absent_tpu()  # Before JAX starts a backend: no TPU runtime on a CPU host.

_EXPORTS = {
    "FeatureSpace": "flix.features",
    "UnknownFeatureError": "flix.errors",
    "FlixConfig": "flix.config",
    "T5Config": "flix.models.t5",
    "DecoderConfig": "flix.models.decoder",
    "make_model": "flix.models.model",
    "EncoderDecoderModel": "flix.models.model",
    "DecoderOnlyModel": "flix.models.model",
    "DecodeOptions": "flix.decoding",
    "DecodeResult": "flix.decoding",
    "merge_params": "flix.merge",
    "freeze_base": "flix.trainable",
    "load_model": "flix.checkpoints",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'flix' has no attribute {name!r}; its public names are "
                         f"{__all__}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # Later lookups skip __getattr__.
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
