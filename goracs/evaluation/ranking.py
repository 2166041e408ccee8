"""Top-K ranking metrics on 0-based ranks (rank 0 = the target is the first recommendation).

One relevant item per sample (BIGRec/GORACS protocol), so the ideal DCG is 1 and NDCG needs no normalisation.
Both functions return the mean over samples.
"""

from __future__ import annotations

import numpy as np

from goracs.evaluation.records import ndcg_gain


def hit_at_k(ranks: np.ndarray, k: int) -> float:
    """HR@K = mean over samples of 1[rank < K]."""
    ranks = _check(ranks, k)
    return float(np.mean(ranks < k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K = mean over samples of 1/log2(rank + 2) if rank < K, else 0."""
    ranks = _check(ranks, k)
    return float(np.mean(ndcg_gain(ranks, k)))


def _check(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"top-K cut-off k={k}: expected k >= 1")
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    if np.any(ranks < 0):
        raise ValueError("ranks are 0-based and must be >= 0")
    return ranks
