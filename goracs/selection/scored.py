"""Importance-score top-k (GraNd, EL2N) and the feature readers shared by the score- and embedding-based methods.

GraNd (Paul et al., 2021): χ(x, y) = E_w ‖∇_w ℓ(x, y)‖₂, here the norm of the per-sample LoRA gradient (feature
``grad_norm``); the expectation over independent runs is the mean of several seeded feature computations
(``grad_norm@0``, ``grad_norm@1``, ...). EL2N: χ(x, y) = E_w ‖p(w, x) − y‖₂ (feature ``el2n``; see the feature stage for
its token-level definition). Both keep the highest scores; ``offset`` > 0 gives the paper's "offset" variant that
skips the ``offset`` very highest ones. data_diet counts its offset from the bottom instead
(``scores.argsort()[o:o+size]``), i.e. its o equals ``N − size − offset`` here; counting from the top keeps the
meaning of a yaml value independent of N and of the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from goracs.selection.pool import Pool, SelectionResult, check_budget
from goracs.selection.sampling import top_k

log = logging.getLogger(__name__)


class TopScoreSelector:
    """Keep the ``budget`` samples with the largest (or smallest) mean of the named per-sample features.

    Args:
        features: feature names averaged into one score, e.g. ``[grad_norm]`` or ``[grad_norm@0, grad_norm@1]``.
        largest: keep the highest scores (GraNd/EL2N: hard examples) when true, the lowest otherwise.
        offset: number of top-ranked samples skipped before taking ``budget`` (0 = plain top-k).
    """

    def __init__(self, features: Sequence[str], largest: bool = True, offset: int = 0):
        self.features = [str(f) for f in features]
        if not self.features:
            raise ValueError("selection.features must name at least one feature, e.g. [grad_norm]")
        if offset < 0:
            raise ValueError(f"selection.offset must be >= 0, got {offset}")
        self.largest = bool(largest)
        self.offset = int(offset)

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        scores = read_score(pool, self.features)
        # The offset cannot push the selection past the end of the ranking: shrink it so exactly m are kept.
        offset = min(self.offset, pool.size - m)
        ranked = top_k(scores, offset + m, largest=self.largest)
        indices = ranked[offset:]
        elapsed = time.perf_counter() - start
        log.info("top-%s %s: %d of %d samples (offset %d) in %.3f s",
                 "max" if self.largest else "min", "+".join(self.features), m, pool.size, offset, elapsed)
        return SelectionResult(indices=indices, scores=scores, stats={"time_s": elapsed})


def read_score(pool: Pool, names: str | Sequence[str]) -> np.ndarray:
    """Mean over ``names`` of the per-sample (N,) training features, as float64; rejects wrong shapes and NaN."""
    names = [names] if isinstance(names, str) else list(names)
    total = np.zeros(pool.size, dtype=np.float64)
    for name in names:
        values = np.asarray(pool.features.get(name, "train"), dtype=np.float64)
        if values.shape != (pool.size,):
            raise ValueError(f"feature {name!r} has shape {values.shape}; a per-sample score of shape "
                             f"({pool.size},) was expected")
        if not np.isfinite(values).all():
            raise ValueError(f"feature {name!r} has {int((~np.isfinite(values)).sum())} NaN/inf values; "
                             "recompute the features (a sample with an empty response gives NaN)")
        total += values
    return total / len(names)


def read_embedding(pool: Pool, name: str, split: str = "train") -> np.ndarray:
    """The (N, d) float32 embedding matrix ``name`` of a split; rejects wrong shapes and NaN."""
    values = np.asarray(pool.features.get(name, split), dtype=np.float32)
    if values.ndim != 2 or (split == "train" and len(values) != pool.size):
        raise ValueError(f"feature {name!r} ({split}) has shape {values.shape}; an embedding matrix of shape "
                         f"({pool.size if split == 'train' else 'M'}, d) was expected")
    if not np.isfinite(values).all():
        raise ValueError(f"feature {name!r} ({split}) contains NaN/inf values")
    return values
