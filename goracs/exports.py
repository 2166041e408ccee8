"""Exports for use outside goracs: the fine-tuned LoRA adapter, the selected indices and the coreset in the official
format.

* :func:`save_adapter` writes a standard PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``,
  written by PEFT's own ``save_pretrained``), loadable with ``peft.PeftModel.from_pretrained(base, folder)`` or as
  ``lora_init`` of :func:`goracs.models.lora.attach_lora`.
* :func:`write_official_coreset` writes the selected training samples as the official BIGRec/TALLRec training file:
  an Alpaca-style JSON list of ``{"instruction", "input", "output"}`` objects (UTF-8, indent 4, non-ASCII literal),
  so the official training scripts can train on our subset.
* :func:`export_selection` writes a job's selected indices (JSON) and its coreset in the official format.

All write atomically: a crash leaves either the previous export or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from peft import PeftModel

from goracs.cache import atomic_write
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

FIELDS = ("instruction", "input", "output")


def save_adapter(model, folder: Path) -> Path:
    """Save the LoRA adapter of ``model`` (a ``PeftModel``, optionally inside torch.compile / DDP / FSDP wrappers)
    to ``folder`` as a PEFT folder, replacing an older export there; returns ``folder``.

    Under FSDP the parameters must be gathered (full state) before calling this; wrappers are only unwrapped.
    """
    peft_model = _unwrap(model)
    if not isinstance(peft_model, PeftModel):
        raise ValueError(f"save_adapter needs a peft.PeftModel (see goracs.models.lora.attach_lora), got "
                         f"{type(model).__module__}.{type(model).__qualname__}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        old = None
        if folder.exists():  # os.replace cannot replace a non-empty folder: move the old one aside first
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved LoRA adapter to %s", folder)
    return folder


def write_official_coreset(train: pd.DataFrame, indices, path: Path, *, task: Task) -> Path:
    """Write rows ``indices`` (positions in ``train``, in that order) of the training split to ``path`` as the
    official BIGRec (SeqRec) / TALLRec (CTR) JSON list; returns ``path``. ``task``: the samples' task (its
    name is logged)."""
    missing = [c for c in FIELDS if c not in train.columns]
    if missing:
        raise ValueError(f"the training samples lack the column(s) {missing} needed for the official format")
    idx = _check_indices(indices, len(train))
    rows = train.iloc[idx][list(FIELDS)].to_dict(orient="records")
    for i, row in zip(idx, rows):
        bad = [f for f in FIELDS if not isinstance(row[f], str)]
        if bad:
            raise ValueError(f"training sample {i} has non-text {bad}: {[row[f] for f in bad]}")
    text = json.dumps(rows, ensure_ascii=False, indent=4)
    atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))
    log.info("wrote %d of %d %s training samples in the official format to %s", len(rows), len(train), task.name,
             path)
    return Path(path)


def export_selection(out_dir: Path, train: pd.DataFrame, indices, *, method: str, budget: int, seed: int,
                     task: Task) -> Path:
    """A job's selection outputs in ``out_dir``: ``selected_indices.json`` (``{"method", "budget", "seed",
    "indices"}``, positions in ``train``) and, when a sample was selected, ``coreset_official.json``
    (:func:`write_official_coreset`: the official scripts can train on the coreset); returns the indices file."""
    path = Path(out_dir) / "selected_indices.json"
    text = json.dumps({"method": method, "budget": int(budget), "seed": int(seed),
                       "indices": np.asarray(indices).tolist()})
    atomic_write(path, lambda p: p.write_text(text))
    if len(indices):
        write_official_coreset(train, indices, Path(out_dir) / "coreset_official.json", task=task)
    return path


def _unwrap(model):
    # torch.compile keeps the original as ``_orig_mod``; DDP / FSDP (v1) wrap it as ``module``.
    while not isinstance(model, PeftModel):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def _check_indices(indices, n: int) -> list[int]:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"the coreset indices must be a non-empty 1-d sequence, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"the coreset indices must be integers, got dtype {idx.dtype}")
    outside = idx[(idx < 0) | (idx >= n)]
    if outside.size:
        raise ValueError(f"coreset index {int(outside[0])} is outside the {n} training samples")
    values, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"coreset index {int(values[counts > 1][0])} is repeated; the indices must be unique")
    return idx.tolist()
