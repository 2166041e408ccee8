"""The :class:`Task` protocol: what every stage may ask of a task. A leaf: it imports nothing of goracs.

A stage (data, features, models, evaluation, selection) receives a task *object* as an argument and imports this
module for type hints only; it never looks a task up by name. The concrete tasks (:mod:`goracs.tasks`:
``SeqRecTask``, ``CTRTask``) sit above the stages they compose, and only ``goracs.run`` (from ``conf/task/<name>.yaml``,
whose ``_target_`` names the class) and the tests build one. Strings name tasks only as data (``Samples.task``,
cache keys, ``metrics.json``).

What a task provides:

* data: whether the interactions suit it (:meth:`~Task.check_tables`), whether test samples get sampled negatives
  (``test_negatives``) and the instruction/input/output texts of a sample (:meth:`~Task.prompt_fields`);
* features: the features it supports (:meth:`~Task.supports_feature`), the text a sample is embedded from
  (:meth:`~Task.embedding_text`);
* fine-tuning and gradients: the prompt header (:meth:`~Task.prompt`), the encoding of a sample into token ids
  (:meth:`~Task.encode`), the answer tokens it scores (:meth:`~Task.answer_ids`) and the per-sample loss and EL2N
  (:meth:`~Task.losses`, from the model; :meth:`~Task.logits_losses`, from full logits);
* selection: the class labels of a split (:meth:`~Task.class_labels`: CTR's like/dislike; None for SeqRec);
* evaluation: the per-sample test records (:meth:`~Task.test_records`), the metrics computed from them
  (:meth:`~Task.metrics`) and their names (:meth:`~Task.metric_names`);
* tuning: the sweep objective (``objective``, a metrics.json key) and its direction (``objective_direction``).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Task(Protocol):
    """What a task provides (module docstring). ``purpose``: ``train`` (fine-tuning, gradients) or ``infer``
    (generation, scoring). ``text`` in :meth:`prompt_fields` is the domain's instruction texts
    (``goracs.data.instructions.DomainText``)."""

    name: str
    faithful_prompts: bool
    like_threshold: float
    test_negatives: bool  # the data stage draws data.n_negatives sampled negatives per test sample
    answers: tuple[str, str] | None  # the answer words it scores (CTR: Yes, No); None for a generative task
    required_columns: tuple[str, ...]  # sample columns fine-tuning reads
    objective: str  # metrics.json key a Hydra sweeper optimises (never a test metric)
    objective_direction: str  # minimize | maximize

    def check_tables(self, tables: Any, data_name: str) -> None: ...
    def prompt_fields(self, text: Any, history: list[str], history_ratings: list[float], target: str,
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
    def class_labels(self, frame: Any) -> Any: ...
    def test_records(self, model, tokenizer, test: Any, items: Any, records: Any, *, faithful: bool,
                     options: Mapping[str, Any]) -> Any: ...
    def metrics(self, records: Any, topk: Sequence[int]) -> dict[str, float]: ...
    def metric_names(self, topk: Sequence[int], ranking: str = "grounding") -> tuple[str, ...]: ...
