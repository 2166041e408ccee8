"""TALLRec CTR evaluation: P(Yes) at the last prompt token and the per-sample CTR records; AUC, logloss and accuracy
are computed from those records (:func:`goracs.evaluation.records.classification_metrics`)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from goracs.evaluation.records import logloss_per_sample
from goracs.models.encoding import answer_token_ids, collate_left, encode_prompt, p_yes, pad_id

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_p_yes(model, tokenizer, prompts: Sequence[str], *, batch_size: int, cutoff_len: int) -> np.ndarray:
    """(N,) P(Yes) = softmax([z_yes, z_no])[0] with ``z`` the logits after the whole prompt (left padding)."""
    yes_id, no_id = answer_token_ids(tokenizer)
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="ctr scoring", unit="batch", leave=False):
        enc = [encode_prompt(tokenizer, p, cutoff_len=cutoff_len) for p in prompts[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate_left(enc, pad_id(tokenizer)).items()}
        logits = model(**batch, logits_to_keep=1).logits[:, -1, :]
        out.append(p_yes(logits, yes_id, no_id).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


def ctr_records(labels: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Per-sample CTR columns of ``test_outputs.parquet``: ``label``, ``p_yes`` and the logloss ``loss``; warns when
    the labels have one class (the AUC is then NaN)."""
    labels, p = np.asarray(labels, dtype=np.int64), np.asarray(p, dtype=np.float64)
    if labels.shape != p.shape or labels.size == 0:
        raise ValueError(f"labels {labels.shape} and probabilities {p.shape} must be equal-length, non-empty")
    if len(np.unique(labels)) < 2:
        log.warning("AUC is undefined: all %d test labels are %d; reporting NaN", labels.size, labels[0])
    return pd.DataFrame({"label": labels, "p_yes": p, "loss": logloss_per_sample(labels, p)})
