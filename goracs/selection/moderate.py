"""Moderate-DS (Xia et al., ICLR 2023): keep the samples of moderate difficulty, measured in embedding space.

Difficulty of sample i = its Euclidean distance to its class prototype, the coordinate-wise median embedding of its
class (``d_i = ‖x_i − median_{j: y_j = y_i} x_j‖₂``; one global prototype when the pool has no labels or
``per_class`` is false). Distances of all classes are ranked together and the ``budget`` samples whose rank is
closest to the median rank are kept: ``argsort(d)[lo : lo + budget]`` with ``lo = (N − budget) // 2``, the band
d2pruning's ``moderate_selection`` keeps (it returns the two removed tails).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from goracs.selection.pool import Pool, SelectionResult, check_budget
from goracs.selection.scored import read_embedding

log = logging.getLogger(__name__)


class ModerateSelector:
    """Args:
        embedding: (N, d) feature the prototypes and distances are computed on.
        per_class: one prototype per label value when ``pool.labels`` exists (CTR), else one global prototype.
    """

    def __init__(self, embedding: str, per_class: bool = True):
        self.embedding = str(embedding)
        self.per_class = bool(per_class)

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult:
        start = time.perf_counter()
        m = check_budget(budget, pool.size)
        emb = read_embedding(pool, self.embedding)
        labels = pool.labels if self.per_class and pool.labels is not None else np.zeros(pool.size, dtype=np.int64)
        distances = prototype_distances(emb, np.asarray(labels))
        lo = (pool.size - m) // 2
        indices = np.argsort(distances, kind="stable")[lo:lo + m]
        elapsed = time.perf_counter() - start
        log.info("moderate: %d of %d samples around the median distance %.4f (%d prototypes) in %.2f s", m,
                 pool.size, float(np.median(distances)), len(np.unique(labels)), elapsed)
        return SelectionResult(indices=indices, scores=distances, stats={"time_s": elapsed})


def prototype_distances(emb: np.ndarray, labels: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """‖x_i − median of x over i's class‖₂ for every row, as float64.

    Medians are taken over column slices and distances over row chunks, so the temporary memory stays O(chunk·d)
    instead of several float64 copies of the whole (N, d) matrix.
    """
    distances = np.empty(len(emb), dtype=np.float64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        block = emb if len(members) == len(emb) else emb[members]
        prototype = np.concatenate([np.median(block[:, j:j + 32], axis=0) for j in range(0, block.shape[1], 32)])
        for a in range(0, len(members), chunk):
            rows = block[a:a + chunk].astype(np.float64)
            distances[members[a:a + chunk]] = np.linalg.norm(rows - prototype, axis=1)
    return distances
