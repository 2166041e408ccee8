"""Samples on disk: one gzip'd JSON-lines file per (data, task, seed) in the ``samples`` cache.

Line 1 is a header ``{"meta": {task, domain, name, table_stats}}``; every other line is one record tagged with
``"split"`` ("train" | "valid" | "test" | "items"). Only the id-level columns are stored (user, item, rating,
timestamp, history, history_ratings, targets, negatives); ``label`` and the prompt texts are rebuilt on load by the
same function that built them, which keeps the files ~10x smaller. pyarrow is not a dependency, hence no parquet.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from goracs.data.instructions import domain_text
from goracs.data.samples import SPLITS, Samples, add_prompt_fields
from goracs.task_protocol import Task

CORE_COLUMNS = ["user", "item", "rating", "timestamp", "history", "history_ratings", "targets", "negatives"]


def write_samples(samples: Samples, path: Path) -> None:
    """Write ``samples`` to ``path`` (gzip JSON lines; call through ``atomic_write``)."""
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=3) as f:
        meta = {"task": samples.task, "domain": samples.domain, "name": samples.name,
                "table_stats": samples.table_stats}
        f.write(json.dumps({"meta": meta}) + "\n")
        for split in SPLITS:
            for record in samples.split(split)[CORE_COLUMNS].to_dict(orient="records"):
                record["split"] = split
                f.write(json.dumps(record, default=_plain) + "\n")
        for record in samples.items.to_dict(orient="records"):
            record["split"] = "items"
            f.write(json.dumps(record, default=_plain) + "\n")


def read_samples(path: Path, *, like_threshold: float, faithful: bool, task: Task) -> Samples:
    """Inverse of ``write_samples``: rebuild the DataFrames and their label/prompt columns (with ``task``'s
    :meth:`~goracs.task_protocol.Task.prompt_fields`; the file names its task: another one is an error)."""
    rows: dict[str, list[dict]] = {s: [] for s in (*SPLITS, "items")}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        meta = json.loads(f.readline())["meta"]
        if meta["task"] != task.name:
            raise ValueError(f"{path} holds {meta['task']} samples, not {task.name} ones")
        for line in f:
            record = json.loads(line)
            rows[record.pop("split")].append(record)
    items = pd.DataFrame.from_records(rows["items"])
    titles = dict(zip(items["item"], items["title"]))
    text = domain_text(meta["domain"])
    frames = {}
    for split in SPLITS:
        df = pd.DataFrame.from_records(rows[split], columns=CORE_COLUMNS)
        df = df.astype({"rating": float, "timestamp": np.int64})
        frames[split] = add_prompt_fields(df, titles, task=task, text=text,
                                          like_threshold=like_threshold, faithful=faithful)
    return Samples(**frames, items=items, task=meta["task"], domain=meta["domain"], name=meta["name"],
                   table_stats=meta["table_stats"])


def _plain(value):
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the samples cache")
