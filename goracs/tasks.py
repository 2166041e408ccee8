"""Tasks as objects: what differs between SeqRec (BIGRec) and CTR (TALLRec), in one place per task.

A task exists exactly when ``conf/task/<name>.yaml`` names its class in ``_target_``; the constructor takes the yaml
keys (``name``, the file's stem, which keys the caches and ``metrics.json``; ``faithful_prompts``;
``like_threshold``). ``goracs-run`` instantiates it and hands the object to every stage. A task owns (the
:class:`Task` protocol):

* data: whether the interactions suit it (:meth:`~Task.check_tables`), whether test samples get sampled negatives
  (``test_negatives``) and the instruction/input/output texts of a sample (:meth:`~Task.prompt_fields`);
* features: the features it supports (:meth:`~Task.supports_feature`), the text a sample is embedded from;
* fine-tuning and gradients: the prompt header (:meth:`~Task.prompt`), the encoding of a sample into token ids
  (:meth:`~Task.encode`), the answer tokens it scores (:meth:`~Task.answer_ids`) and the per-sample loss and EL2N
  (:meth:`~Task.losses`, from the model; :meth:`~Task.logits_losses`, from full logits);
* selection: the class labels of a split (:meth:`~Task.class_labels`: CTR's like/dislike; None for SeqRec);
* evaluation: the per-sample test records (:meth:`~Task.test_records`), the metrics computed from them
  (:meth:`~Task.metrics`) and their names (:meth:`~Task.metric_names`);
* tuning: the sweep objective (``objective``, a metrics.json key) and its direction (``objective_direction``).

The pieces themselves stay in the stage modules (``goracs.data.instructions``, ``goracs.models.encoding``,
``goracs.models.lm_head``, ``goracs.evaluation.*``) as free functions; a task composes them. The methods import them
when called: the stage modules import this one (no cycle), and the data stage and the report never import torch.

Strings name tasks only as data (``Samples.task``, cache keys, ``metrics.json``); :func:`as_task` turns a name, a
config mapping or a task into a task, looking a name up in ``conf/task/`` (the config group is the registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from goracs.data.instructions import DomainText


@runtime_checkable
class Task(Protocol):
    """What a task provides (module docstring). ``purpose``: ``train`` (fine-tuning, gradients) or ``infer``
    (generation, scoring)."""

    name: str
    faithful_prompts: bool
    like_threshold: float
    test_negatives: bool  # the data stage draws data.n_negatives sampled negatives per test sample
    answers: tuple[str, str] | None  # the answer words it scores (CTR: Yes, No); None for a generative task
    required_columns: tuple[str, ...]  # sample columns fine-tuning reads
    objective: str  # metrics.json key a Hydra sweeper optimises (never a test metric)
    objective_direction: str  # minimize | maximize

    def check_tables(self, tables: Any, data_name: str) -> None: ...
    def prompt_fields(self, text: DomainText, history: list[str], history_ratings: list[float], target: str,
                      label: int, *, like_threshold: float, faithful: bool) -> tuple[str, str, str]: ...
    def supports_feature(self, name: str) -> bool: ...
    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str: ...
    def embedding_text(self, sample: Mapping, *, faithful: bool) -> str: ...
    def encode(self, tokenizer, sample: Mapping, *, faithful: bool, cutoff_len: int, train_on_inputs: bool = True,
               response_mask: bool = False) -> dict: ...
    def answer_ids(self, tokenizer) -> tuple[int, int] | None: ...
    def losses(self, model, batch: Mapping, *, answer_ids: tuple[int, int] | None, position_ids=None,
               want_el2n: bool = False) -> tuple[Any, Any]: ...
    def logits_losses(self, logits, batch: Mapping, *, answer_ids: tuple[int, int] | None,
                      want_el2n: bool = False) -> tuple[Any, Any]: ...
    def class_labels(self, frame: pd.DataFrame) -> np.ndarray | None: ...
    def test_records(self, model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, records: pd.DataFrame, *,
                     faithful: bool, options: Mapping[str, Any]) -> pd.DataFrame: ...
    def metrics(self, records: pd.DataFrame, topk: Sequence[int]) -> dict[str, float]: ...
    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]: ...


def as_task(task: Task | str | Mapping[str, Any]) -> Task:
    """A task from a task, its name (``conf/task/<name>.yaml``) or a config mapping (with ``_target_``:
    instantiated as it is; without: looked up by ``name``, its ``faithful_prompts`` and ``like_threshold`` kept)."""
    if isinstance(task, str):
        return task_for_name(task)
    if isinstance(task, Mapping):
        if "_target_" in task:  # a flat node: its class called with its keys (as hydra's instantiate would)
            from hydra.utils import get_class

            return get_class(task["_target_"])(**{k: v for k, v in task.items() if k != "_target_"})
        keys = {k: task[k] for k in ("faithful_prompts", "like_threshold") if k in task}
        return task_for_name(task.get("name"), **keys)
    return task


def task_for_name(name: Any, **keys: Any) -> Task:
    """The task of ``conf/task/<name>.yaml``, with ``keys`` replacing that file's values."""
    from goracs.config_dir import CONF_DIR

    folder = Path(CONF_DIR) / "task"
    path = folder / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"task.name={name!r} is unknown (task={name!r}: no {path}); expected one of {known}")
    return as_task({**_task_file(str(path)), **keys})


@lru_cache(maxsize=None)
def _task_file(path: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


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
        from goracs.data.instructions import seqrec_fields

        return seqrec_fields(text, history, target, faithful=faithful)

    def supports_feature(self, name: str) -> bool:
        return True  # every feature of goracs.features.FeatureStore

    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str:
        from goracs.data.prompts import alpaca_prompt

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

        return seqrec_records(self, model, tokenizer, test, items, records, faithful=faithful, **options)

    def metrics(self, records: pd.DataFrame, topk: Sequence[int]) -> dict[str, float]:
        from goracs.evaluation.records import ranking_metrics

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
        from goracs.data.instructions import ctr_fields

        liked = [t for t, r in zip(history, history_ratings) if r > like_threshold]
        disliked = [t for t, r in zip(history, history_ratings) if not r > like_threshold]
        return ctr_fields(text, liked, disliked, target, int(label))

    def supports_feature(self, name: str) -> bool:
        return True  # every feature of goracs.features.FeatureStore

    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str:
        from goracs.data.prompts import alpaca_prompt

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
        from goracs.evaluation.records import classification_metrics

        return classification_metrics(records)

    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]:
        return ("loss", "auc", "logloss", "accuracy")
