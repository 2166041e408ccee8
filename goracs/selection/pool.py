"""The contract between the feature stage and every selection method.

A selector sees a :class:`Pool` (arrays only, no model, no raw data), an absolute budget and a seed, and returns a
:class:`SelectionResult`. Methods exist because ``conf/selection/<name>.yaml`` names their class in ``_target_``;
there is no registry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from goracs.errors import ConfigError
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
# The methods (conf/selection/<name>.yaml stems) whose selection ignores the budget: goracs-run does not compare their
# budget with the pool, and goracs-report gives them one column for every budget. The one list of them.
BUDGET_FREE_METHODS = frozenset({"full", "none"})


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
    """

    size: int
    features: FeatureSource = field(default_factory=ArrayFeatures)
    labels: np.ndarray | None = None
    valid_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"pool size must be >= 0, got {self.size}")
        if self.labels is not None and len(self.labels) != self.size:
            raise ValueError(f"Pool.labels has {len(self.labels)} entries, expected the pool size {self.size}")


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

    def save(self, path: str | Path) -> None:
        """Write the result to ``path`` as an ``.npz``: ``indices``, ``scores`` (empty when None) and ``meta``, the
        stats and traces as a JSON string (no pickle, so :meth:`load` reads it with ``allow_pickle=False``)."""
        meta = json.dumps({"stats": self.stats, "traces": self.traces}, default=float)
        scores = self.scores if self.scores is not None else np.zeros(0)
        with open(path, "wb") as f:
            np.savez(f, indices=self.indices, scores=scores, meta=np.array(meta))

    @classmethod
    def load(cls, path: str | Path) -> SelectionResult:
        """The result :meth:`save` wrote to ``path``."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(indices=z["indices"], scores=z["scores"] if z["scores"].size else None, stats=meta["stats"],
                       traces=meta["traces"])


class Selector(Protocol):
    """A coreset method. The constructor takes only the method's hyper-parameters (the yaml keys)."""

    def select(self, pool: Pool, budget: int, *, seed: int) -> SelectionResult: ...


def check_budget(budget: int, size: int, *, strict: bool = False) -> int:
    """Validate an absolute budget; return the effective budget ``min(budget, size)``.

    A budget that is not a positive integer is a :class:`~goracs.errors.ConfigError` (a ``ValueError``). A budget at
    or above the pool size means "everything" (logged), unless ``strict``: then a budget above the pool size is a
    ConfigError naming both numbers. ``goracs-run`` checks strictly, before any feature is computed, because there a
    budget beyond the pool is a typo or the wrong data slice more often than a wish for the whole pool (which
    ``selection=full`` asks for); the strict check logs nothing, the method's own check logs what it takes.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ConfigError(f"budget must be an integer number of samples, got {budget!r}")
    if budget <= 0:
        raise ConfigError(f"budget={budget}: expected a positive number of training samples")
    if strict:
        if budget > size:
            raise ConfigError(f"budget={budget} is larger than the training pool ({size} samples); lower budget= "
                              f"or raise data.max_train, or use selection=full")
        return int(budget)
    if budget >= size:
        log.info("budget %d >= pool size %d: selecting the whole pool", budget, size)
        return size
    return int(budget)


def whole_pool(size: int, **stats: float) -> SelectionResult:
    """The result for a budget that covers the pool."""
    return SelectionResult(indices=np.arange(size, dtype=np.int64), stats=dict(stats))


def build_pool(samples: Any, features: FeatureSource, task: Task) -> Pool:
    """The pool of a data stage's ``samples`` (:class:`goracs.data.Samples`): one entry per training sample, the
    class labels of :func:`class_labels`, and ``features`` (computed lazily: random and full never trigger a model).
    ``task``: the samples' task (:class:`goracs.task_protocol.Task`)."""
    labels, valid_labels = class_labels(samples, task)
    return Pool(size=len(samples.train), features=features, labels=labels, valid_labels=valid_labels)


def class_labels(samples: Any, task: Task) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Train and validation class labels of a task that has them (:meth:`~goracs.task_protocol.Task.class_labels`;
    CTR: they drive GORACS's label-enhanced selection and the classes of CCS/Moderate); ``(None, None)`` for a generative
    task."""
    train, valid = task.class_labels(samples.train), task.class_labels(samples.valid)
    return (None, None) if train is None or valid is None else (train, valid)
