"""``RecDataModule``: sample DataFrames -> token batches for LoRA fine-tuning (any task).

What a batch holds (the task's :meth:`~goracs.task_protocol.Task.encode`, from the rules in
:mod:`goracs.models.encoding`, shared with features and evaluation):

* SeqRec: ``input_ids``, ``attention_mask``, ``labels`` of ``prompt + output + EOS`` (``encode_lm``), truncated to
  ``cutoff_len`` tokens; prompt labels are -100 unless ``train_on_inputs`` (BIGRec default: True).
* CTR: ``input_ids``, ``attention_mask`` of the prompt alone (``encode_prompt``, the prompt's *end* kept) and
  ``label`` (1 = the user likes the target item), scored at the last prompt token.

Every batch is left-padded (as the official code and decoder-only generation need).
"""

from __future__ import annotations

import logging
from typing import Sequence

import lightning.pytorch as pl
import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from goracs.models.encoding import collate_left, pad_id
from goracs.task_protocol import Task

log = logging.getLogger(__name__)

_TOKENS = ("input_ids", "attention_mask", "labels")  # left-padded by collate_left; other keys (CTR's label) stacked


class RecDataModule(pl.LightningDataModule):
    """Tokenised train/valid sets for one task; an empty ``valid`` gives no validation loader.

    ``seed`` fixes the shuffling order of the training set (a ``torch.Generator`` per loader), so the same seed
    gives the same batches.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, train: pd.DataFrame, valid: pd.DataFrame | None, *,
                 task: Task, faithful: bool = True, batch_size: int = 8, eval_batch_size: int = 16,
                 cutoff_len: int = 512, train_on_inputs: bool = True, seed: int = 0):
        super().__init__()
        for name, frame in (("train", train), ("valid", valid)):
            if frame is not None and len(frame):
                missing = [c for c in task.required_columns if c not in frame.columns]
                if missing:
                    raise ValueError(f"{name} samples lack the column(s) {missing} needed for task={task.name!r}")
        if len(train) == 0:
            raise ValueError("the training set is empty: nothing to fine-tune on (check the budget and the selection)")
        if batch_size < 1 or eval_batch_size < 1 or cutoff_len < 2:
            raise ValueError(f"batch_size={batch_size}, eval_batch_size={eval_batch_size} must be >= 1 and "
                             f"cutoff_len={cutoff_len} >= 2")
        self.tokenizer, self.task, self.faithful = tokenizer, task, faithful
        self.train_frame = train.reset_index(drop=True)
        self.valid_frame = valid.reset_index(drop=True) if valid is not None else train.iloc[:0]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.cutoff_len, self.train_on_inputs, self.seed = cutoff_len, train_on_inputs, seed
        self.pad_id = pad_id(tokenizer)
        self.train_set: list[dict] = []
        self.valid_set: list[dict] = []

    @property
    def has_validation(self) -> bool:
        return len(self.valid_frame) > 0

    def setup(self, stage: str | None = None) -> None:
        # Tokenising a few thousand short prompts takes well under a second; redo it in every (spawned) process.
        if not self.train_set:
            self.train_set = self.encode(self.train_frame)
            # Validation batches by length (less padding): val/loss is a per-sample mean, so the order is free.
            self.valid_set = sorted(self.encode(self.valid_frame), key=lambda e: len(e["input_ids"]))
            lengths = [len(e["input_ids"]) for e in self.train_set]
            log.info("tokenised %d train / %d valid samples (%s); train length mean %.0f, max %d tokens",
                     len(self.train_set), len(self.valid_set), self.task.name, sum(lengths) / len(lengths),
                     max(lengths))

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        """Encoded samples of ``frame`` (:meth:`~goracs.task_protocol.Task.encode`: dicts of token-id lists, plus
        ``label`` for CTR)."""
        return [self.task.encode(self.tokenizer, row, faithful=self.faithful, cutoff_len=self.cutoff_len,
                                 train_on_inputs=self.train_on_inputs) for row in frame.to_dict("records")]

    def collate(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        tensors = collate_left([{k: v for k, v in b.items() if k in _TOKENS} for b in batch], self.pad_id)
        for key in batch[0].keys() - set(_TOKENS):
            tensors[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
        return tensors

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator,
                          collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_validation:
            return []
        return DataLoader(self.valid_set, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self.collate)
