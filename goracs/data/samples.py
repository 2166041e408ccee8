"""Cleaned tables -> train/valid/test samples with histories, labels, negatives and prompt fields.

Default sources (spec ``goracs.md`` §4.1): each user's interactions are sorted by timestamp (stable, file order
breaks ties); for ``i in range(min(H, L-1), L)`` the sample has history ``items[max(i-H, 0):i]`` and target
``items[i]`` (H = ``history_len`` = 10, L = the user's length), so a user with L <= H gives one sample and a longer
one ``L - H``. Samples are then sorted by target time (stable) and split globally: the last ``test_size`` go to
test, the ``valid_size`` before them to valid (each a count, or a fraction of all samples rounded to the nearest).

Pre-split sources (DEALRec, a ``split`` column): one train sample per user (history = train[:-1], target = last
train item), one valid sample (history = train, target = valid[0]) and one test sample (history = train + valid,
``targets`` = every test item, ``item`` = the first), histories cut to the last H items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from goracs.data.instructions import domain_text
from goracs.data.negatives import sample_negatives
from goracs.data.tables import Tables
from goracs.task_protocol import Task

SPLITS = ("train", "valid", "test")
COLUMNS = ["user", "item", "rating", "timestamp", "history", "history_ratings", "label", "instruction", "input",
           "output", "negatives", "targets"]


@dataclass
class Samples:
    """The data stage's product: one DataFrame per split plus the item catalogue (``item``, ``title``, ...).

    Split columns (``COLUMNS``): user, item (target id), rating (float or NaN), timestamp (int), history (ids, oldest
    first, <= history_len), history_ratings, label (int, rating > like_threshold; 1 when unrated), instruction,
    input, output (str), negatives (SeqRec test: n_negatives ids; else []), targets ([item], or every DEALRec test
    item). ``task`` is the task's name (:class:`goracs.task_protocol.Task`), as data.

    ``table_stats`` holds the counts of the cleaned interactions table (``users``, ``items``, ``interactions``),
    computed at build time because the table itself is not kept.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    task: str
    domain: str
    name: str
    table_stats: dict = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


@dataclass(frozen=True)
class SampleOptions:
    """Options of ``data`` that shape the samples (yaml keys of the same names)."""

    history_len: int = 10  # max history items per sample
    min_history: int = 0  # drop samples with a shorter history (Movies preset: 3)
    valid_size: int | float | None = None  # count, or fraction of all samples; null for pre-split sources
    test_size: int | float | None = None
    n_negatives: int = 99  # SeqRec test negatives per sample
    max_train: int | None = None  # seeded random cap per split, applied after the split; null = all
    max_valid: int | None = None
    max_test: int | None = None


def build_samples(tables: Tables, *, task: Task, domain: str, name: str, like_threshold: float,
                  faithful: bool, options: SampleOptions, seed: int) -> Samples:
    """Build all three splits from cleaned tables for ``task`` (a :class:`goracs.task_protocol.Task`; see the
    module docstring for the rules)."""
    validate_options(options, domain=domain)
    text = domain_text(domain)
    inter = tables.interactions
    task.check_tables(tables, name)
    if tables.presplit and (options.valid_size is not None or options.test_size is not None):
        raise ValueError(f"data '{name}' fixes its own split; data.valid_size and data.test_size must be null")
    core = _windows(inter, options)
    if tables.presplit:
        splits = {s: core[core["split"] == s].drop(columns="split") for s in SPLITS}
    else:
        splits = _chronological_split(core, options, name)
    caps = {"train": options.max_train, "valid": options.max_valid, "test": options.max_test}
    for index, split in enumerate(SPLITS):
        splits[split] = _cap(splits[split], caps[split], np.random.default_rng([seed, index]), split)
    catalogue = tables.items["item"].astype(str).to_numpy()
    if task.test_negatives:
        splits["test"] = _with_negatives(splits["test"], inter, catalogue, options.n_negatives, seed)
    titles = dict(zip(catalogue, tables.items["title"]))
    frames = {s: add_prompt_fields(df.drop(columns="position").reset_index(drop=True), titles, task=task, text=text,
                                   like_threshold=like_threshold, faithful=faithful)
              for s, df in splits.items()}
    stats = {"users": int(inter["user"].nunique()), "items": len(catalogue), "interactions": len(inter)}
    return Samples(**frames, items=tables.items.reset_index(drop=True), task=task.name, domain=domain, name=name,
                   table_stats=stats)


def validate_options(options: SampleOptions, *, domain: str) -> None:
    """Cheap checks run before any file is read, so a typo fails in milliseconds with the option's name."""
    domain_text(domain)
    for key in ("history_len", "n_negatives"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{key}={value!r}; expected a positive integer")
    if isinstance(options.min_history, bool) or not isinstance(options.min_history, int) or options.min_history < 0:
        raise ValueError(f"data.min_history={options.min_history!r}; expected an integer >= 0")
    for key in ("valid_size", "test_size"):
        value = getattr(options, key)
        if value is not None:
            _split_count(value, 1, f"data.{key}")
    for split in SPLITS:
        cap = getattr(options, f"max_{split}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"data.max_{split}={cap!r}; expected a positive sample count or null")


def add_prompt_fields(df: pd.DataFrame, titles: dict[str, str], *, task: Task, text, like_threshold: float,
                      faithful: bool) -> pd.DataFrame:
    """Add ``label``, ``instruction``, ``input``, ``output`` (the task's
    :meth:`~goracs.task_protocol.Task.prompt_fields`; and ``negatives = []`` where absent) to core columns."""
    df = df.copy()
    rating = df["rating"].to_numpy(dtype=float)
    df["label"] = np.where(np.isnan(rating), 1, rating > like_threshold).astype(np.int64)
    if "negatives" not in df.columns:
        df["negatives"] = [[] for _ in range(len(df))]
    fields = []
    for hist, hrat, item, label in zip(df["history"], df["history_ratings"], df["item"], df["label"].tolist()):
        names = list(map(titles.__getitem__, hist))
        fields.append(task.prompt_fields(text, names, hrat, titles[item], label, like_threshold=like_threshold,
                                         faithful=faithful))
    cols = list(zip(*fields)) if fields else ([], [], [])
    df["instruction"], df["input"], df["output"] = (list(c) for c in cols)
    return df[COLUMNS]


def _windows(inter: pd.DataFrame, options: SampleOptions) -> pd.DataFrame:
    """One row per sample: user, item, rating, timestamp, history, history_ratings, targets, position (+split)."""
    user_code, _ = pd.factorize(inter["user"], sort=False)
    order = np.lexsort((inter["timestamp"].to_numpy(), user_code))  # stable: file order breaks timestamp ties
    users = inter["user"].to_numpy(dtype=object)[order]
    items = inter["item"].to_numpy(dtype=object)[order]
    ratings = inter["rating"].to_numpy(dtype=float)[order]
    times = inter["timestamp"].to_numpy(dtype=np.int64)[order]
    codes = user_code[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, len(codes)])
    first = np.repeat(starts, lengths)
    pos = np.arange(len(codes)) - first
    H = options.history_len
    if "split" in inter.columns:
        split = inter["split"].to_numpy(dtype=object)[order]
        n_tr = _count_per_user(split == "train", starts, lengths)
        n_va = _count_per_user(split == "valid", starts, lengths)
        n_te = _count_per_user(split == "test", starts, lengths)
        rows = [starts[n_tr > 0] + n_tr[n_tr > 0] - 1, starts[n_va > 0] + n_tr[n_va > 0],
                starts[n_te > 0] + (n_tr + n_va)[n_te > 0]]
        n_targets = [np.ones(len(rows[0]), int), np.ones(len(rows[1]), int), n_te[n_te > 0]]
        labels = [np.full(len(r), s, dtype=object) for r, s in zip(rows, SPLITS)]
        target, n_target, sample_split = np.concatenate(rows), np.concatenate(n_targets), np.concatenate(labels)
    else:
        target = np.flatnonzero(pos >= np.minimum(H, np.repeat(lengths, lengths) - 1))
        n_target = np.ones(len(target), int)
        sample_split = None
    hist_len = np.minimum(pos[target], H)
    keep = hist_len >= options.min_history
    target, n_target, hist_len = target[keep], n_target[keep], hist_len[keep]
    # Python-list slicing is ~5x faster than slicing numpy arrays and converting each slice with tolist().
    item_list, rating_list = items.tolist(), ratings.tolist()
    bounds = list(zip(target.tolist(), hist_len.tolist(), n_target.tolist()))
    core = pd.DataFrame({
        "user": users[target].astype(str), "item": items[target].astype(str), "rating": ratings[target],
        "timestamp": times[target],
        "history": [item_list[t - h:t] for t, h, _ in bounds],
        "history_ratings": [rating_list[t - h:t] for t, h, _ in bounds],
        "targets": [item_list[t:t + n] for t, _, n in bounds],
        "position": pos[target],
    })
    if sample_split is not None:
        core["split"] = sample_split[keep]
    return core


def _count_per_user(mask: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.add.reduceat(mask.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)


def _chronological_split(core: pd.DataFrame, options: SampleOptions, name: str) -> dict[str, pd.DataFrame]:
    if options.valid_size is None or options.test_size is None:
        raise ValueError(f"data '{name}' needs data.valid_size and data.test_size (counts or fractions)")
    n = len(core)
    n_test = _split_count(options.test_size, n, "data.test_size")
    n_valid = _split_count(options.valid_size, n, "data.valid_size")
    if n_test + n_valid >= n:
        raise ValueError(f"data '{name}': valid_size={options.valid_size} and test_size={options.test_size} take "
                         f"{n_valid + n_test} of the {n} samples, leaving none for training")
    core = core.iloc[np.argsort(core["timestamp"].to_numpy(), kind="stable")]
    n_train = n - n_valid - n_test
    return {"train": core.iloc[:n_train], "valid": core.iloc[n_train:n_train + n_valid],
            "test": core.iloc[n_train + n_valid:]}


def _split_count(size, n: int, option: str) -> int:
    if isinstance(size, float) and 0.0 < size < 1.0:
        return int(round(size * n))
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        return size
    raise ValueError(f"{option}={size!r}; expected a sample count (int >= 0) or a fraction in (0, 1)")


def _cap(df: pd.DataFrame, cap: int | None, rng: np.random.Generator, split: str) -> pd.DataFrame:
    """Seeded random subset of ``cap`` rows, kept in their original (chronological) order."""
    if cap is None or cap >= len(df):
        return df
    return df.iloc[np.sort(rng.choice(len(df), size=cap, replace=False))]


def _with_negatives(test: pd.DataFrame, inter: pd.DataFrame, catalogue: np.ndarray, k: int, seed: int) -> pd.DataFrame:
    """Attach ``negatives``: k item ids outside the user's whole interaction history (which contains the targets)."""
    code_of = pd.Series(np.arange(len(catalogue)), index=catalogue)
    wanted = inter[inter["user"].isin(set(test["user"]))]
    codes = code_of.reindex(wanted["item"].to_numpy()).to_numpy()
    seen = {u: np.unique(c.to_numpy()) for u, c in pd.Series(codes).groupby(wanted["user"].to_numpy())}
    drawn = sample_negatives(test["user"].tolist(), test["position"].to_numpy(), seen, len(catalogue), k, seed)
    test = test.copy()
    test["negatives"] = [catalogue[d].tolist() for d in drawn]
    return test
