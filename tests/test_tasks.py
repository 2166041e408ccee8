"""Tasks as objects (goracs/tasks.py): a third task defined in this file alone runs through goracs-run end to end,
and no module outside the task module compares task names."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from conftest import compose_run_config, task_named
from goracs.task_protocol import Task
from goracs.tasks import CTRTask, SeqRecTask

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LikeWordTask:
    """A toy third task: *generate* "liked" or "disliked" for the target item (CTR's question as a causal-LM answer),
    built from goracs's public helpers; nothing outside this file knows it."""

    name: str = "likeword"
    faithful_prompts: bool = True
    like_threshold: float = 3

    test_negatives: ClassVar[bool] = False
    answers: ClassVar[None] = None
    required_columns: ClassVar[tuple[str, ...]] = ("instruction", "input", "output")
    objective: ClassVar[str] = "train/best_val_loss"
    objective_direction: ClassVar[str] = "minimize"

    def check_tables(self, tables: Any, data_name: str) -> None:
        if tables.interactions["rating"].isna().any():
            raise ValueError(f"task={self.name} needs ratings")

    def prompt_fields(self, text, history, history_ratings, target, label, *, like_threshold, faithful):
        seen = ", ".join(f'"{t}" ({r:g} stars)' for t, r in zip(history, history_ratings))
        return (f"Will the user like the target {text.ctr_noun}? Answer liked or disliked.",
                f"History: {seen}\nTarget: \"{target}\"", "liked" if label else "disliked")

    def supports_feature(self, name: str) -> bool:
        return name != "el2n"

    def prompt(self, sample: Mapping, *, purpose: str = "train", faithful: bool = True) -> str:
        from goracs.data.prompts import alpaca_prompt

        return alpaca_prompt(sample["instruction"], sample["input"], faithful=faithful)

    def embedding_text(self, sample: Mapping, *, faithful: bool) -> str:
        return self.prompt(sample, faithful=faithful)

    def encode(self, tokenizer, sample: Mapping, *, faithful: bool, cutoff_len: int, train_on_inputs: bool = True,
               response_mask: bool = False) -> dict:
        from goracs.models.encoding import encode_lm

        return encode_lm(tokenizer, self.prompt(sample, faithful=faithful), sample["output"], cutoff_len=cutoff_len,
                         train_on_inputs=train_on_inputs)

    def answer_ids(self, tokenizer) -> None:
        return None

    def losses(self, model, batch: Mapping, *, answer_ids=None, position_ids=None, want_el2n: bool = False):
        from goracs.models.lm_head import lm_losses

        res = lm_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"], position_ids=position_ids)
        return res.loss, None

    def logits_losses(self, logits, batch: Mapping, *, answer_ids=None, want_el2n: bool = False):
        from goracs.models.encoding import lm_loss_per_sample

        return lm_loss_per_sample(logits, batch["labels"]), None

    def class_labels(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["label"].to_numpy(dtype=np.int64)

    def test_records(self, model, tokenizer, test: pd.DataFrame, items: pd.DataFrame, records: pd.DataFrame, *,
                     faithful: bool, options: Mapping[str, Any]) -> pd.DataFrame:
        from goracs.evaluation.likelihood import response_losses

        rows = test.to_dict("records")
        records["loss"] = response_losses(model, tokenizer, [self.prompt(r, faithful=faithful) for r in rows],
                                          [r["output"] for r in rows], batch_size=options["batch_size"],
                                          cutoff_len=options["cutoff_len"])
        return records

    def metrics(self, records: pd.DataFrame, topk: Sequence[int]) -> dict[str, float]:
        return {"loss": float(np.nanmean(records["loss"].to_numpy(dtype=float)))}

    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]:
        return ("loss",)


SLICE = ["data.max_train=16", "data.max_valid=8", "data.max_test=8", "model=tiny_llama", "trainer=cpu",
         "trainer.lightning.max_epochs=1", "logger=none", "budget=4", "selection=random"]


def test_a_task_defined_in_a_test_file_runs_end_to_end(tmp_path):
    from goracs.run import run

    toy = [f"task._target_={__name__}.LikeWordTask", "task.name=likeword"]
    cfg = compose_run_config(SLICE + toy, tmp_path / "job", tmp_path / "cache")
    metrics = run(cfg)
    on_disk = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["task"] == "likeword" and metrics["task"] == "likeword"
    assert set(k for k in on_disk if k.startswith("test/")) == {"test/loss"} and math.isfinite(on_disk["test/loss"])
    assert 0.0 <= on_disk["data/positive_rate"] <= 1.0  # the task's class labels reach the data statistics
    coreset = json.loads((tmp_path / "job" / "coreset_official.json").read_text())
    assert len(coreset) == 4 and {c["output"] for c in coreset} <= {"liked", "disliked"}


def test_the_toy_task_is_a_task_and_refuses_what_it_does_not_support(tmp_path):
    from goracs.features import FeatureStore
    from goracs.selection import build_pool

    toy = LikeWordTask()
    assert isinstance(toy, Task)
    frame = pd.DataFrame({"label": [1, 0, 1], "user": ["a", "b", "c"]})
    samples = SimpleNamespace(train=frame, valid=frame.iloc[:2], task="likeword")
    store = FeatureStore(samples, None, None, None, faithful=True, config=None, cache_dir=tmp_path, task=toy)
    with pytest.raises(KeyError, match="not available for task 'likeword'"):
        store.get("el2n")
    pool = build_pool(samples, store, toy)
    assert pool.labels.tolist() == [1, 0, 1] and pool.valid_labels.tolist() == [1, 0]


def test_built_in_tasks_come_from_their_config_files():
    assert task_named("seqrec") == SeqRecTask() and task_named("ctr") == CTRTask()
    assert task_named("ctr", like_threshold=4) == CTRTask(like_threshold=4)
    for task in (SeqRecTask(), CTRTask()):
        assert isinstance(task, Task)


def test_metric_names_match_the_metrics():
    ranks = pd.DataFrame({"loss": [1.0, 2.0], "rank": pd.array([0, 3], dtype="Int64"),
                          "rank_full": pd.array([1, 50], dtype="Int64"),
                          "exact": pd.array([True, False], dtype="boolean")})
    assert list(SeqRecTask().metrics(ranks, [1, 5])) == list(SeqRecTask().metric_names([1, 5]))
    labels = pd.DataFrame({"label": [1, 0, 1], "p_yes": [0.9, 0.2, 0.4], "loss": [0.1, 0.2, 0.9]})
    assert list(CTRTask().metrics(labels, [10])) == list(CTRTask().metric_names([10]))


def test_sweep_objective_follows_the_task_direction():
    from goracs.run_record import sweep_objective

    assert sweep_objective({"train/best_val_loss": 0.5}, LikeWordTask) == 0.5
    assert sweep_objective(None, LikeWordTask) == math.inf
    rising = SimpleNamespace(objective="val/auc", objective_direction="maximize")
    assert sweep_objective({"val/auc": 0.7}, rising) == 0.7 and sweep_objective({}, rising) == -math.inf


def test_no_module_compares_task_names_outside_the_task_module():
    pattern = re.compile(r"""[=!]=\s*["'](seqrec|ctr)["']|\bin\s*\(\s*["'](seqrec|ctr)["']|\bTASKS\s*=""")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "goracs").rglob("*.py"))
                 if path.name != "tasks.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
