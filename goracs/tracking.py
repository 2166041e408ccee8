"""Experiment loggers (W&B offline by default, CSV, none) built from ``conf/logger/<name>.yaml``.

Lightning loggers receive the training curves from the Trainer; this module adds what happens outside the
Trainer, as it happens: the resolved config at job start (``start``), the selection stats, POO trace and selected
indices (a W&B artifact) once selected (``log_selection``), and the test metrics with a summary table at the end
(``log_results``). ``finish`` always closes the W&B run, so jobs of a multirun sharing one
process never write into each other's run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping

from hydra.utils import instantiate

log = logging.getLogger(__name__)


def build_loggers(logger_cfg: Mapping[str, Any] | None) -> list:
    """Instantiate every node of the logger group (``{}`` -> no logger)."""
    loggers = []
    for name, node in (logger_cfg or {}).items():
        if node and "_target_" in node:
            loggers.append(instantiate(node))
            log.info("logger %s: %s", name, node["_target_"])
    return loggers


def start(loggers: list, config: Mapping[str, Any]) -> None:
    """Open the runs at job start with the full resolved config, so that a job that stops at selection
    (``stage=select``) or crashes is still in W&B with its config."""
    for lg in loggers:
        lg.log_hyperparams(dict(config))
        if type(lg).__name__ == "WandbLogger":
            run = lg.experiment
            run.define_metric("select/poo_trace_step")  # the POO trace is plotted against its own step
            run.define_metric("select/poo_trace", step_metric="select/poo_trace_step")


def log_selection(loggers: list, result: Any, features_s: float, artifact: Path | None) -> None:
    """The selection's statistics (``select/<stat>``, with ``time/features_s``), per-step traces (``select/<trace>``:
    the POO after greedy and after each exchange) and the indices file (``artifact``), logged as soon as the
    selection (a :class:`goracs.selection.SelectionResult`) is done."""
    stats = {**{f"select/{k}": v for k, v in result.stats.items()}, "time/features_s": features_s}
    for run in _log_scalars(loggers, stats):
        for name, values in result.traces.items():
            for step, value in enumerate(values):
                run.log({f"select/{name}": value, f"select/{name}_step": step})
        if artifact is not None and artifact.exists():
            import wandb

            art = wandb.Artifact(name=f"selection-{run.id}", type="selection")
            art.add_file(str(artifact))
            run.log_artifact(art)


def log_results(loggers: list, metrics: Mapping[str, float]) -> None:
    """The job's final metrics: logged, in the W&B summary, and as a one-row summary table (``job/summary``)."""
    values = _scalars(metrics)
    for run in _log_scalars(loggers, values):
        import wandb

        run.log({"job/summary": wandb.Table(columns=list(values), data=[list(values.values())])})


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


def _log_scalars(loggers: list, values: Mapping[str, Any]) -> list:
    """Log the numeric ``values`` in every logger (W&B: also in the run summary); return the W&B runs."""
    scalars, runs = _scalars(values), []
    for lg in loggers:
        lg.log_metrics(scalars)
        if type(lg).__name__ != "WandbLogger":
            lg.save()
            continue
        lg.experiment.summary.update(scalars)
        runs.append(lg.experiment)
    return runs


def finish(loggers: list, failed: bool = False) -> None:
    """Close loggers; ``wandb.finish`` even on failure (exit code 1 marks the W&B run as failed)."""
    for lg in loggers:
        try:
            lg.finalize("failed" if failed else "success")
        except Exception as e:  # a logger failing to close must not hide the job's own error
            log.warning("logger %s did not close cleanly: %s", type(lg).__name__, e)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
