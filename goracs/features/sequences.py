"""Item-id sequences for the DEALRec surrogate (SASRec), built from the samples' ``history`` and ``item`` columns.

Public entry: :func:`sequence_data` turns a split's samples into left-padded next-item arrays. Item ids are the
catalogue order ``samples.items["item"]`` mapped to ``1..n_items`` (0 = padding), as in DEALRec's 1-based files.

Which sequence a training sample contributes (``features.surrogate.sequence``):

- ``history`` (official): DEALRec's ``SeqDataset(data_type="train")`` feeds ``train[:-2]`` and predicts
  ``train[1:-1]``, i.e. it trains on ``train[:-1]`` and never sees the last train item, which is the target of the
  LLM sample. Our train sample's ``history`` is exactly ``train[:-1]`` (its ``item`` = ``train[-1]``), so the
  sequence is the history. Users with one or two train items give no transition (their loss and gradient are 0, as
  in the official code, so their influence is 0).
- ``history_and_target``: ``history + [item]``, one transition more per user (the LLM sample's own target).

Either way the history was cut to the last ``data.history_len`` items by the data stage. With ``data.history_len``
below the surrogate's ``max_len`` (50), this is shorter than the official full training sequence for users with more
than ``history_len`` train items (Games: 6.1 train items per user on average, so few are cut at the default 10).
A sequence of L items gives ``min(L - 1, max_len)`` positions: inputs ``s[:-1]``, targets ``s[1:]``, oldest dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from goracs.errors import ConfigError

SEQUENCE_MODES = ("history", "history_and_target")


@dataclass(frozen=True)
class SequenceData:
    """Left-padded next-item arrays of one split (all int64, 0 = padding).

    Attributes:
        inputs: (n, T) input item ids; T = the longest input among the rows (<= max_len).
        targets: (n, T) next item of each input position, 0 where there is none.
        exclude: (n, K) item ids a negative may not be (the row's own items), 0-padded.
        n_items: catalogue size; ids run 1..n_items.
        max_len: the surrogate's maximum length; position ids are ``max_len - T .. max_len - 1`` so a row's last item
            always sits at position ``max_len - 1``, exactly as with the official padding to ``max_len``.
    """

    inputs: np.ndarray
    targets: np.ndarray
    exclude: np.ndarray
    n_items: int
    max_len: int

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def n_positions(self) -> int:
        """Number of (input, next item) transitions over all rows."""
        return int((self.targets > 0).sum())


def sequence_data(frame: pd.DataFrame, catalogue: list[str], *, mode: str, max_len: int,
                  with_target_as_last: bool = False) -> SequenceData:
    """Next-item arrays of the samples in ``frame`` (see the module docstring for ``mode``).

    ``with_target_as_last`` builds the evaluation form instead: inputs = the whole history, and only the last
    position has a target, the sample's ``item`` (used to validate the surrogate on the valid split).
    """
    if mode not in SEQUENCE_MODES:
        raise ConfigError(f"features.surrogate.sequence={mode!r}: expected one of {list(SEQUENCE_MODES)}")
    index = {item: i + 1 for i, item in enumerate(catalogue)}
    rows_in, rows_tg, rows_ex = [], [], []
    for hist, item in zip(frame["history"], frame["item"]):
        ids = _ids(list(hist) + [item], index)
        if with_target_as_last:
            inp = ids[:-1][-max_len:]
            tgt = [0] * (len(inp) - 1) + [ids[-1]] if inp else []
        else:
            seq = ids[:-1] if mode == "history" else ids
            inp, tgt = seq[:-1][-max_len:], seq[1:][-max_len:]
        rows_in.append(inp)
        rows_tg.append(tgt)
        rows_ex.append(ids)
    width = max((len(r) for r in rows_in), default=0)
    return SequenceData(inputs=_pad_left(rows_in, max(width, 1)), targets=_pad_left(rows_tg, max(width, 1)),
                        exclude=_pad_left(rows_ex, max((len(r) for r in rows_ex), default=1)),
                        n_items=len(catalogue), max_len=int(max_len))


def sample_negatives(data: SequenceData, rng: np.random.Generator) -> np.ndarray:
    """One negative item per target position, uniform over ``1..n_items`` minus the row's own items (official
    ``neg_sample``: rejection sampling); 0 at padded positions. Shape (n, T), int64."""
    mask = data.targets > 0
    neg = rng.integers(1, data.n_items + 1, size=data.targets.shape)
    redraw = mask & _collides(neg, data.exclude)
    while redraw.any():
        neg[redraw] = rng.integers(1, data.n_items + 1, size=int(redraw.sum()))
        redraw = redraw & _collides(neg, data.exclude)
    return np.where(mask, neg, 0)


def sequence_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of the rows' ``(history, item)`` ids: what the surrogate's training data depends on."""
    rows = [[list(map(str, h)), str(i)] for h, i in zip(frame["history"], frame["item"])]
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


def catalogue_digest(catalogue: list[str]) -> str:
    """SHA-256 of the catalogue's item ids in order (they fix the embedding rows)."""
    return hashlib.sha256(json.dumps(list(map(str, catalogue))).encode("utf-8")).hexdigest()


def _ids(items: list, index: dict[str, int]) -> list[int]:
    try:
        return [index[str(i)] for i in items]
    except KeyError as err:
        raise ValueError(f"sample item {err.args[0]!r} is not in the catalogue (samples.items)") from None


def _pad_left(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        if row:
            out[r, width - len(row):] = row
    return out


def _collides(neg: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    return (neg[:, :, None] == exclude[:, None, :]).any(-1)
