"""Summary statistics of a ``Samples`` object (the data-only mode prints them as a table)."""

from __future__ import annotations

import numpy as np

from goracs.data.samples import SPLITS, Samples
from goracs.task_protocol import Task


def sample_stats(samples: Samples, task: Task) -> dict:
    """Flat dict: ``users``, ``items``, ``interactions`` (cleaned table), ``samples_{train,valid,test}``,
    ``mean_history_len`` (items per sample, all splits) and, for a task with class labels (CTR,
    :meth:`goracs.task_protocol.Task.class_labels`), ``positive_rate`` (share of label 1 over all samples) plus
    ``positive_rate_{split}``. ``task``: the samples' task."""
    stats = dict(samples.table_stats)
    lengths = []
    for split in SPLITS:
        df = samples.split(split)
        stats[f"samples_{split}"] = len(df)
        lengths.extend(len(h) for h in df["history"])
    stats["mean_history_len"] = float(np.mean(lengths)) if lengths else 0.0
    classes = {split: task.class_labels(samples.split(split)) for split in SPLITS}
    if all(c is not None for c in classes.values()):
        labels = np.concatenate(list(classes.values()))
        stats["positive_rate"] = float(labels.mean()) if len(labels) else float("nan")
        for split, lab in classes.items():
            stats[f"positive_rate_{split}"] = float(lab.mean()) if len(lab) else float("nan")
    return stats
