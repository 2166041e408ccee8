"""Feature stage: per-sample text embeddings, LoRA gradients, losses and EL2N, cached on disk.

Public entry: :class:`FeatureStore` (``store.get("grad_norm")``). The pieces are usable alone:
:class:`GradientExtractor` (one backward per batch, exact per-sample gradients), :func:`make_projection`,
:func:`run_batches` (single process or Lightning ``predict`` shards).
"""

from goracs.features.config import FeatureConfig
from goracs.features.gradients import GradientExtractor, select_lora_params
from goracs.features.projection import CountSketch, GaussianProjection, make_projection
from goracs.features.sharded import run_batches
from goracs.features.store import FEATURES, FeatureStore

__all__ = ["FEATURES", "CountSketch", "FeatureConfig", "FeatureStore", "GaussianProjection", "GradientExtractor",
           "make_projection", "run_batches", "select_lora_params"]
