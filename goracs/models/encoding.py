"""Sample -> text -> token ids, and the per-sample losses of the two tasks (composed by :mod:`goracs.tasks`).

One place decides what the model sees, so fine-tuning, gradient features and evaluation agree:

* SeqRec (BIGRec): causal-LM cross-entropy on ``prompt + output + EOS``; with ``train_on_inputs`` (the official
  default) the prompt tokens count too. Per-sample loss = mean token CE over the non-masked tokens
  (spec goracs.md §2.3: Σ_t ℓ_t / #{t counted}).
* CTR (TALLRec): two-way cross-entropy over the logits of the "Yes" and "No" answer tokens at the last prompt
  token, ``p = softmax(z[yes], z[no])``; label 1 = like. Equivalent to the official ``logits[:, -3]`` position on
  ``prompt + answer + EOS`` with left padding, without depending on how the answer tokenises with its EOS.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

IGNORE = -100


def encode_lm(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, *, cutoff_len: int = 512,
              train_on_inputs: bool = True) -> dict[str, list[int]]:
    """Token ids, attention mask and labels for causal-LM training on ``prompt + response`` (+ EOS).

    As BIGRec: truncate to ``cutoff_len`` and append EOS only when there is room; labels equal the ids, with the
    prompt tokens set to -100 unless ``train_on_inputs``.
    """
    ids = tokenizer(prompt + response, truncation=True, max_length=cutoff_len, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and len(ids) < cutoff_len and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    labels = list(ids)
    if labels:
        # Nothing predicts the first token. Without this, the last left-pad position would "predict" it, a loss term
        # an unpadded sample does not have, and losses and gradients would depend on the batch's padding.
        labels[0] = IGNORE
    if not train_on_inputs:
        n_prompt = len(tokenizer(prompt, truncation=True, max_length=cutoff_len, add_special_tokens=True)["input_ids"])
        labels[:n_prompt] = [IGNORE] * min(n_prompt, len(labels))
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenizer_corpus(samples: Any) -> list[str]:
    """Text that a tokenizer trained from scratch (tiny_llama) learns from: every instruction, input and output of
    every split, the item titles, and "Yes"/"No". Features and fine-tuning both load the backbone with it."""
    parts: list[str] = []
    for split in ("train", "valid", "test"):
        df = getattr(samples, split, None)
        if df is not None:
            parts += df["instruction"].tolist() + df["input"].tolist() + df["output"].tolist()
    items = getattr(samples, "items", None)
    if items is not None and "title" in items:
        parts += items["title"].astype(str).tolist()
    return parts + ["Yes", "No"]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, cutoff_len: int = 512) -> dict[str, list[int]]:
    """Token ids of a prompt alone (generation, CTR scoring); over-long prompts keep their *end*, which holds the
    question and the "### Response:" marker the answer depends on."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = ids[-cutoff_len:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id left padding uses: the tokenizer's pad token, else its EOS (Llama-style tokenizers have no pad token;
    padded positions are masked out, so which id fills them never changes a value)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate_left(batch: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a list of encoded samples (ids with ``pad_id``, mask with 0, labels with -100)."""
    width = max(len(b["input_ids"]) for b in batch)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
    has_labels = "labels" in batch[0]
    if has_labels:
        out["labels"] = []
    for b in batch:
        pad = width - len(b["input_ids"])
        out["input_ids"].append([pad_id] * pad + list(b["input_ids"]))
        out["attention_mask"].append([0] * pad + list(b["attention_mask"]))
        if has_labels:
            out["labels"].append([IGNORE] * pad + list(b["labels"]))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, yes: str = "Yes", no: str = "No") -> tuple[int, int]:
    """Ids of the first token of the "Yes" and "No" answers as they follow "### Response:\\n"."""
    probe = "### Response:\n"
    base = tokenizer(probe, add_special_tokens=False)["input_ids"]
    ids = []
    for word in (yes, no):
        full = tokenizer(probe + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"the tokenizer merges the answer {word!r} into the prompt; cannot score CTR")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"'{yes}' and '{no}' start with the same token; cannot score CTR")
    return ids[0], ids[1]


def lm_loss_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over the counted (label != -100) tokens of each sample."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    b, t, v = shift_logits.shape
    # (B*T, V) rows: same maths as the (B, V, T) layout, ~3x faster on CPU (contiguous vocab rows).
    tok = F.cross_entropy(shift_logits.reshape(b * t, v), shift_labels.reshape(b * t), ignore_index=IGNORE,
                          reduction="none").view(b, t)
    counted = (shift_labels != IGNORE).sum(dim=1).clamp(min=1)
    return tok.sum(dim=1) / counted


def ctr_loss_per_sample(last_logits: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """(B,) two-way cross-entropy on ``[z_yes, z_no]`` at the last prompt token; ``labels`` 1 = Yes."""
    pair = last_logits[:, [yes_id, no_id]].float()
    target = (1 - labels.long())  # class 0 = Yes, class 1 = No
    return F.cross_entropy(pair, target, reduction="none")


def p_yes(last_logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """(B,) P(Yes) = softmax([z_yes, z_no])[0] (TALLRec evaluation)."""
    return torch.softmax(last_logits[:, [yes_id, no_id]].float(), dim=-1)[:, 0]
