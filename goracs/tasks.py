"""The concrete tasks: what differs between SeqRec (BIGRec) and CTR (TALLRec), in one place per task.

A task exists exactly when ``conf/task/<name>.yaml`` names its class in ``_target_``; the constructor takes the yaml
keys (``name``, the file's stem, which keys the caches and ``metrics.json``; ``faithful_prompts``;
``like_threshold``). ``goracs-run`` instantiates it and hands the object to every stage; what a stage may ask of it
is the :class:`goracs.task_protocol.Task` protocol.

This module sits above the stages it composes: the pieces stay in the stage modules (``goracs.data.instructions``,
``goracs.models.encoding``, ``goracs.models.lm_head``, ``goracs.evaluation.*``) as free functions that receive
plain values (prompts, token ids, candidate ids), and a task composes them. The stages import only the protocol, so
no import runs back up. The torch-side pieces are imported when a method is called, so that ``stage=data`` (which
builds a task) never imports torch.

Per-sample losses (the quantity whose gradient is taken, spec ``goracs.md`` §2.3) and EL2N (Paul et al. 2021:
``‖softmax(z) − onehot(y)‖₂``; there is no official LLM definition):

* SeqRec: loss = mean next-token cross-entropy over every counted token of ``prompt + output + EOS`` (prompt
  included, as the official gradient code); EL2N = the per-token error norm ``‖softmax(z_t) − onehot(y_t)‖₂`` over
  the full vocabulary, averaged over the **response** tokens (a sample whose response was cut off by ``cutoff_len``
  falls back to all its counted tokens; :mod:`goracs.models.lm_head`).
* CTR: loss = two-way cross-entropy over ``[z_Yes, z_No]`` at the last prompt token; EL2N over the two answer
  classes, ``√2 · |P(Yes) − y|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from goracs.data.instructions import DomainText, ctr_fields, seqrec_fields
from goracs.data.prompts import alpaca_prompt
from goracs.evaluation.records import classification_metrics, ranking_metrics
from goracs.task_protocol import Task

__all__ = ["CTRTask", "SeqRecTask", "Task"]


@dataclass(frozen=True)
class SeqRecTask:
    """Sequential recommendation (BIGRec): generate the next item's quoted title; causal-LM loss on
    ``prompt + output + EOS``; tested by grounding the generation in the catalogue and/or likelihood ranking of the
    target among its sampled negatives."""

    name: str = "seqrec"
    faithful_prompts: bool = True  # official prompt quirks (header spaces, "ad" typo, input ending "\n ")
    like_threshold: float = 3  # label = rating > this; SeqRec only keeps it in the ``label`` column

    test_negatives: ClassVar[bool] = True
    answers: ClassVar[tuple[str, str] | None] = None
    required_columns: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")
    objective: ClassVar[str] = "train/best_val_loss"
    objective_direction: ClassVar[str] = "minimize"

    def check_tables(self, tables: Any, data_name: str) -> None:
        return None  # any interactions: ratings are not needed

    def prompt_fields(self, text: DomainText, history: list[str], history_ratings: list[float], target: str,
                      label: int, *, like_threshold: float, faithful: bool) -> tuple[str, str, str]:
        return seqrec_fields(text, history, target, faithful=faithful)

    def supports_feature(self, name: str) -> bool:
        return True  # every feature of goracs.features.FeatureStore

    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str:
        # The official code: one space after "request." when training, two at inference.
        header = "infer" if purpose == "infer" else "train"
        return alpaca_prompt(sample["instruction"], sample["input"], header=header, faithful=faithful)

    def embedding_text(self, sample: Mapping, *, faithful: bool) -> str:
        return self.prompt(sample, purpose="infer", faithful=faithful) + sample["output"] + "\n"

    def encode(self, tokenizer, sample: Mapping, *, faithful: bool, cutoff_len: int, train_on_inputs: bool = True,
               response_mask: bool = False) -> dict:
        """``prompt + output + EOS`` (:func:`goracs.models.encoding.encode_lm`); ``response_mask`` adds
        ``response`` (1 on the response tokens, for EL2N)."""
        from goracs.models.encoding import IGNORE, encode_lm

        prompt = self.prompt(sample, purpose="train", faithful=faithful)
        item = encode_lm(tokenizer, prompt, sample["output"], cutoff_len=cutoff_len, train_on_inputs=train_on_inputs)
        if response_mask:
            answer = encode_lm(tokenizer, prompt, sample["output"], cutoff_len=cutoff_len, train_on_inputs=False)
            item["response"] = [int(label != IGNORE) for label in answer["labels"]]
        return item

    def answer_ids(self, tokenizer) -> None:
        return None  # generative: no answer tokens

    def losses(self, model, batch: Mapping, *, answer_ids=None, position_ids=None, want_el2n: bool = False):
        # Through the LM head in chunks (goracs.models.lm_head): same values, no (B, T, vocab) logits.
        from goracs.models.lm_head import lm_losses

        res = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"], position_ids=position_ids,
                        response=batch.get("response"), want_el2n=want_el2n)
        return res.loss, res.el2n

    def logits_losses(self, logits, batch: Mapping, *, answer_ids=None, want_el2n: bool = False):
        from goracs.models.encoding import lm_loss_per_sample
        from goracs.models.lm_head import losses_from_logits

        errors = None
        if want_el2n:
            errors = losses_from_logits(logits, batch["labels"], response=batch.get("response"), want_el2n=True).el2n
        return lm_loss_per_sample(logits, batch["labels"]), errors

    def class_labels(self, frame: pd.DataFrame) -> None:
        return None  # generative: no classes

    def test_records(self, model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, records: pd.DataFrame, *,
                     faithful: bool, options: Mapping[str, Any]) -> pd.DataFrame:
        from goracs.evaluation.evaluate import seqrec_records

        rows = test.to_dict("records")
        return seqrec_records(model, tokenizer, test, items, records,
                              train_prompts=[self.prompt(r, purpose="train", faithful=faithful) for r in rows],
                              infer_prompts=[self.prompt(r, purpose="infer", faithful=faithful) for r in rows],
                              **options)

    def metrics(self, records: pd.DataFrame, topk: Sequence[int]) -> dict[str, float]:
        return ranking_metrics(records, topk)

    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]:
        """Keys of :meth:`metrics` when every ranking it asks for ran (``eval.ranking``)."""
        suffixes = {"grounding": ("", "_full"), "likelihood": ("_ll",), "both": ("", "_full", "_ll"),
                    "none": ()}[ranking]
        ranked = tuple(f"{m}@{k}{s}" for s in suffixes for k in sorted(int(k) for k in topk) for m in ("ndcg", "hit"))
        return ("loss", *ranked, *(("exact_match",) if "" in suffixes else ()))


@dataclass(frozen=True)
class CTRTask:
    """CTR / like prediction (TALLRec): answer Yes/No for the target item given the liked and disliked history;
    two-way cross-entropy over the Yes/No logits at the last prompt token; tested by P(Yes): AUC, logloss,
    accuracy."""

    name: str = "ctr"
    faithful_prompts: bool = True  # official prompt quirks (header spaces)
    like_threshold: float = 3  # label = rating > this; also splits the history into liked/disliked

    test_negatives: ClassVar[bool] = False
    required_columns: ClassVar[tuple[str, ...]] = ("instruction", "input", "label")
    objective: ClassVar[str] = "train/best_val_loss"
    objective_direction: ClassVar[str] = "minimize"
    answers: ClassVar[tuple[str, str]] = ("Yes", "No")

    def check_tables(self, tables: Any, data_name: str) -> None:
        if tables.presplit or tables.interactions["rating"].isna().any():
            raise ValueError(f"task={self.name} needs a rating for every interaction, but data '{data_name}' has none "
                             f"({'DEALRec sequences carry no ratings' if tables.presplit else 'missing ratings'}); "
                             "use task=seqrec")

    def prompt_fields(self, text: DomainText, history: list[str], history_ratings: list[float], target: str,
                      label: int, *, like_threshold: float, faithful: bool) -> tuple[str, str, str]:
        liked = [t for t, r in zip(history, history_ratings) if r > like_threshold]
        disliked = [t for t, r in zip(history, history_ratings) if not r > like_threshold]
        return ctr_fields(text, liked, disliked, target, int(label))

    def supports_feature(self, name: str) -> bool:
        return True  # every feature of goracs.features.FeatureStore

    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str:
        # TALLRec's one header, for training, evaluation and embedding alike.
        return alpaca_prompt(sample["instruction"], sample["input"], header="ctr", faithful=faithful)

    def embedding_text(self, sample: Mapping, *, faithful: bool) -> str:
        return self.prompt(sample, faithful=faithful)  # the label stays hidden

    def encode(self, tokenizer, sample: Mapping, *, faithful: bool, cutoff_len: int, train_on_inputs: bool = True,
               response_mask: bool = False) -> dict:
        """The prompt alone (:func:`goracs.models.encoding.encode_prompt`, its end kept) and its 0/1 ``label``."""
        from goracs.models.encoding import encode_prompt

        item = dict(encode_prompt(tokenizer, self.prompt(sample, purpose="train", faithful=faithful),
                                  cutoff_len=cutoff_len))
        item["label"] = int(sample["label"])
        return item

    def answer_ids(self, tokenizer) -> tuple[int, int]:
        from goracs.models.encoding import answer_token_ids

        return answer_token_ids(tokenizer, *self.answers)

    def losses(self, model, batch: Mapping, *, answer_ids, position_ids=None, want_el2n: bool = False):
        # Only the last position's logits are needed: skip the (B, T, vocab) LM-head product.
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=position_ids,
                    use_cache=False, logits_to_keep=1)
        return self.logits_losses(out.logits, batch, answer_ids=answer_ids, want_el2n=want_el2n)

    def logits_losses(self, logits, batch: Mapping, *, answer_ids, want_el2n: bool = False):
        """From the last position of ``logits``: the two-way cross-entropy over ``[z_Yes, z_No]`` and EL2N
        ``‖softmax([z_Yes, z_No]) − onehot(y)‖₂ = √2 · |P(Yes) − y|``."""
        import math

        import torch

        from goracs.models.encoding import ctr_loss_per_sample

        if answer_ids is None:
            raise ValueError("CTR features need the token ids of the Yes/No answers")
        yes, no = answer_ids
        last = logits[:, -1, :]
        errors = None
        if want_el2n:
            with torch.no_grad():
                p_yes = torch.softmax(last.detach()[:, [yes, no]].float(), dim=-1)[:, 0]
                errors = math.sqrt(2.0) * (p_yes - batch["label"].float()).abs()
        return ctr_loss_per_sample(last, batch["label"], yes, no), errors

    def class_labels(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["label"].to_numpy(dtype=np.int64)  # 1 = like

    def test_records(self, model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, records: pd.DataFrame, *,
                     faithful: bool, options: Mapping[str, Any]) -> pd.DataFrame:
        from goracs.evaluation.ctr import ctr_records, predict_p_yes

        prompts = [self.prompt(r, purpose="infer", faithful=faithful) for r in test.to_dict("records")]
        p = predict_p_yes(model, tokenizer, prompts, batch_size=options["batch_size"],
                          cutoff_len=options["cutoff_len"])
        return pd.concat([records, ctr_records(test["label"].to_numpy(), p)], axis=1)

    def metrics(self, records: pd.DataFrame, topk: Sequence[int]) -> dict[str, float]:
        return classification_metrics(records)

    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]:
        return ("loss", "auc", "logloss", "accuracy")
