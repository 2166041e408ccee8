"""The contract between the feature stage and every selection method.

A selector sees a :class:`Pool` (arrays only, no model, no raw data), an absolute budget and a seed, and returns a
:class:`SelectionResult`. Methods exist because ``conf/selection/<name>.yaml`` names their class in ``_target_``;
there is no registry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")


@runtime_checkable
class FeatureSource(Protocol):
    """Anything that returns a named per-sample feature array for a split (``train`` = the pool, ``valid``)."""

    def get(self, name: str, split: str = "train") -> np.ndarray: ...


class ArrayFeatures:
    """In-memory :class:`FeatureSource`: ``ArrayFeatures(train={"text_emb": X}, valid={"text_emb": Y})``."""

    def __init__(self, train: Mapping[str, np.ndarray] | None = None, valid: Mapping[str, np.ndarray] | None = None):
        self._arrays = {"train": dict(train or {}), "valid": dict(valid or {})}

    def get(self, name: str, split: str = "train") -> np.ndarray:
        if split not in self._arrays:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        try:
            return self._arrays[split][name]
        except KeyError:
            have = sorted(self._arrays[split])
            raise KeyError(f"feature {name!r} is not available for split {split!r}; available: {have}") from None


@dataclass(frozen=True)
class Pool:
    """What a selector may look at.

    Attributes:
        size: number of training samples N (indices are 0..N-1).
        features: lazily computed, disk-cached per-sample features (``features.get("grad_norm")`` -> (N,)).
        labels: (N,) integer class per training sample (CTR: 1 = like), or None for generative tasks.
        valid_labels: (M,) integer class per validation sample, or None.
        groups: (N,) group key per sample (the user id), or None.
    """

    size: int
    features: FeatureSource = field(default_factory=ArrayFeatures)
    labels: np.ndarray | None = None
    valid_labels: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"pool size must be >= 0, got {self.size}")
        for name in ("labels", "groups"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != self.size:
                raise ValueError(f"Pool.{name} has {len(arr)} entries, expected the pool size {self.size}")


@dataclass(frozen=True)
class SelectionResult:
    """Selected indices (unique, sorted int64), optional per-sample scores (N,), and stats logged as ``select/<key>``."""

    indices: np.ndarray
    scores: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)
    # Ordered series (e.g. the GORACS POO trace), logged step by step and stored in metrics.json as lists.
    traces: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("selection returned duplicate indices")
        object.__setattr__(self, "indices", np.sort(idx))


class Selector(Protocol):
    """A coreset method. The constructor takes only the method's hyper-parameters (the yaml keys)."""

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult: ...


def check_budget(budget: int, size: int) -> int:
    """Validate an absolute budget; return the effective budget ``min(budget, size)``.

    Raises ValueError for budget <= 0. A budget at or above the pool size means "everything" (logged).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be an integer number of samples, got {budget!r}")
    if budget <= 0:
        raise ValueError(f"budget must be a positive number of samples, got {budget}")
    if budget >= size:
        log.info("budget %d >= pool size %d: selecting the whole pool", budget, size)
        return size
    return int(budget)


def whole_pool(size: int, **stats: float) -> SelectionResult:
    """The result for a budget that covers the pool."""
    return SelectionResult(indices=np.arange(size, dtype=np.int64), stats=dict(stats))
