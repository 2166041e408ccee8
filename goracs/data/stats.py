"""Summary statistics of a ``Samples`` object (the data-only mode prints them as a table)."""

from __future__ import annotations

import numpy as np

from goracs.data.samples import SPLITS, Samples


def sample_stats(samples: Samples) -> dict:
    """Flat dict: ``users``, ``items``, ``interactions`` (cleaned table), ``samples_{train,valid,test}``,
    ``mean_history_len`` (items per sample, all splits) and, for task ctr, ``positive_rate`` (share of label 1 over
    all samples) plus ``positive_rate_{split}``."""
    stats = dict(samples.table_stats)
    lengths = []
    for split in SPLITS:
        df = samples.split(split)
        stats[f"samples_{split}"] = len(df)
        lengths.extend(len(h) for h in df["history"])
    stats["mean_history_len"] = float(np.mean(lengths)) if lengths else 0.0
    if samples.task == "ctr":
        labels = np.concatenate([samples.split(s)["label"].to_numpy() for s in SPLITS])
        stats["positive_rate"] = float(labels.mean()) if len(labels) else float("nan")
        for split in SPLITS:
            lab = samples.split(split)["label"].to_numpy()
            stats[f"positive_rate_{split}"] = float(lab.mean()) if len(lab) else float("nan")
    return stats
