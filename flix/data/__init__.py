"""flix data: task-language pairs in seqio, the offline benchmark, XTREME-UP, and metrics."""

from flix.data.aggregation import aggregate, as_pair
from flix.data.converter import FlixEncDecFeatureConverter, FlixPrefixLMFeatureConverter
from flix.data.offline import OfflineConfig, OfflineData, absent_cells, generate, make_holdout
from flix.data.offline_tasks import register_offline
from flix.data.pairs import (HoldOut, Pair, PairRegistration, PairTask, PretrainTask,
                             encode_pair, examples_source, expected_rates, mixing_rate,
                             register_pair_mixture, register_pair_task, unregister)
from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS, pair_output_features, text_features
from flix.data.xtreme_up import XtremeUpRegistration, register_xtreme_up_experiment
