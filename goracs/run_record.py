"""The per-job ``metrics.json``: one flat, self-describing JSON object per run (style.md B5).

Keys: ``data, task, model, selection, budget, seed, experiment, variant, status, error, data/*, test/*, select/*,
train/*, time/*_s, n_selected, config_key, overrides, git_sha, versions, created_at, run_dir``. It is rewritten
atomically at each stage boundary, so a killed job leaves a readable file with ``status: running``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import math
import subprocess
from pathlib import Path
from typing import Any, Iterable

from goracs.cache import atomic_write, config_key

log = logging.getLogger(__name__)

PACKAGES = ("goracs", "torch", "transformers", "peft", "lightning", "hydra-core", "numpy", "pandas", "POT",
            "geomloss", "wandb")
# The overrides that are table axes (or change no result); every other override makes the job a ``variant``.
AXES = frozenset({"budget", "seed", "selection", "data", "task", "model", "experiment", "experiment_name", "resume",
                  "stage", "logger", "hparams_search"})


class RunRecord:
    """Accumulates a job's identity, metrics and timings, and writes them to ``<run_dir>/metrics.json``."""

    def __init__(self, run_dir: Path, identity: dict[str, Any], job_config: dict[str, Any], overrides: list[str],
                 repo_root: Path):
        """``identity``: the job's table axes (data, task, model, selection, budget, seed, experiment); its
        ``variant`` is derived from ``overrides`` (:func:`variant`)."""
        self.path = Path(run_dir) / "metrics.json"
        self.data: dict[str, Any] = {
            **identity,
            "variant": variant(overrides),
            "status": "running",
            "config_key": job_key(job_config),
            "overrides": list(overrides),
            "git_sha": git_sha(repo_root),
            "versions": package_versions(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(Path(run_dir).resolve()),
        }

    def start(self, resume: bool) -> dict[str, Any] | None:
        """Begin the job. With ``resume``, when the folder's metrics.json says ``ok`` for the same config: return it
        with ``skipped: True`` (and write nothing). Otherwise write ``status: running``, warning when an earlier job
        here was killed, and return None."""
        previous = self.finished_before() if resume else None
        if previous is not None:
            log.info("skipping %s: metrics.json already says ok for this config (resume=false to rerun)",
                     self.path.parent)
            return {**previous, "skipped": True}
        if self.interrupted_before():
            log.warning("%s: metrics.json says a job is running here (a killed job?); taking over the folder, and "
                        "fine-tuning resumes from its last checkpoint if it left one", self.path.parent)
        self.write()
        return None

    def finished_before(self) -> dict[str, Any] | None:
        """The folder's earlier metrics.json if it says ``ok`` for the same config (a resumed sweep skips the job)."""
        if not self.path.exists():
            return None
        try:
            old = json.loads(self.path.read_text())
        except ValueError:
            return None
        same = old.get("status") == "ok" and old.get("config_key") == self.data["config_key"]
        return old if same else None

    def interrupted_before(self) -> bool:
        """Whether the folder's metrics.json says ``running``: an earlier job here was killed (or is still alive)."""
        try:
            return json.loads(self.path.read_text()).get("status") == "running"
        except (OSError, ValueError):
            return False

    def fail(self, error: BaseException) -> None:
        """Record ``status: failed`` with the error's type and message (the traceback is logged at debug level)."""
        log.debug("job failed", exc_info=error)
        self.update({"status": "failed", "error": f"{type(error).__name__}: {error}"})

    def done(self, title: str, summary: dict[str, Any]) -> dict[str, Any]:
        """Record ``status: ok``, print the CLI's final summary (``title`` and the ``summary`` values, see
        :func:`summary_table`) and return the record."""
        self.update({"status": "ok"})
        print(summary_table(title, summary))
        return self.data

    def update(self, values: dict[str, Any]) -> None:
        self.data.update({k: _jsonable(v) for k, v in values.items()})
        self.write()

    def write(self) -> None:
        text = json.dumps(self.data, indent=2, sort_keys=False, allow_nan=True)
        atomic_write(self.path, lambda p: p.write_text(text + "\n"))


def sweep_objective(metrics: dict | None, task: Any = None) -> float:
    """What a Hydra sweeper optimises: the task's ``objective`` in its ``objective_direction``
    (:class:`goracs.task_protocol.Task`, or its class; default and both built-in tasks: the job's best validation loss
    ``train/best_val_loss``, minimised), never a test metric, so tuning cannot leak the test set. The worst value
    (``+inf`` when minimising, ``-inf`` when maximising: never the best trial) when the job failed or did not
    validate (``selection=none``, an empty validation split): Optuna 2.x refuses a NaN objective and would end the
    whole search."""
    key, direction = ("train/best_val_loss", "minimize") if task is None else (task.objective,
                                                                                task.objective_direction)
    value = (metrics or {}).get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return -math.inf if direction == "maximize" else math.inf


def variant(overrides: Iterable[str]) -> str:
    """The job's overrides beyond the table :data:`AXES`, sorted and comma-joined, e.g. ``"selection.lam=0.0"``, or
    ``"default"``: the rows of an ablation report (``goracs-report --rows variant``)."""
    rest = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in AXES)
    return ",".join(rest) or "default"


def selection_metrics(result: Any, *, features_s: float, select_s: float) -> dict[str, Any]:
    """The selection stage's entries: ``time/features_s``, ``time/select_s`` (selection alone), ``n_selected`` and
    the result's ``select/<stat>`` values and ``select/<trace>`` lists (a :class:`goracs.selection.SelectionResult`)."""
    return {"time/features_s": features_s, "time/select_s": select_s, "n_selected": len(result.indices),
            **{f"select/{k}": v for k, v in result.stats.items()},
            **{f"select/{k}": v for k, v in result.traces.items()}}


def summary_table(title: str, values: dict[str, Any]) -> str:
    """The CLI's final summary: a blank line, ``title``, a rule, then one ``key  value`` line per scalar (floats
    with 4 decimals; lists such as traces left out)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in values.items() if not isinstance(v, list)]
    width = max((len(k) for k, _ in rows), default=10)
    lines = ["", title, "-" * max(len(title), width + 12), *(f"{k:<{width}}  {v}" for k, v in rows)]
    return "\n".join(lines)


CONSTRUCTION_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_")


def job_key(job_config: dict[str, Any]) -> str:
    """Hash of the resolved job config without what does not change results: the logger, paths, resume, Hydra's own
    node, Hydra's construction keys (``_target_`` and friends: how a node is built, not what it computes) and the
    top-level ``cutoff_len`` (its value is already in every node that reads it), so that how a node is built can change
    without re-running finished jobs. A new value-determining option (a new default) does change the key."""
    ignored = ("logger", "paths", "resume", "hydra", "tags", "experiment_name", "cutoff_len")
    relevant = {k: _values(v) for k, v in job_config.items() if k not in ignored}
    return config_key(relevant)


def _values(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _values(v) for k, v in node.items() if k not in CONSTRUCTION_KEYS}
    if isinstance(node, list):
        return [_values(v) for v in node]
    return node


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return v  # written as NaN/Infinity (allow_nan); pandas reads these back
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
