"""Experiment loggers (W&B offline by default, CSV, none) built from ``conf/logger/<name>.yaml``.

Lightning loggers receive the training curves from the Trainer; this module adds what happens outside the
Trainer: the resolved config, the test metrics (``test/ndcg@10``...), the selection stats and POO trace, and the
selected indices as a W&B artifact. ``finish`` always closes the W&B run, so jobs of a multirun sharing one
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


def log_outside_trainer(loggers: list, config: Mapping[str, Any], metrics: Mapping[str, float],
                        traces: Mapping[str, list[float]], artifact: Path | None) -> None:
    """Record config, scalar metrics, per-step traces and the indices file in every logger."""
    for lg in loggers:
        lg.log_hyperparams(dict(config))
        lg.log_metrics({k: float(v) for k, v in metrics.items()})
        if type(lg).__name__ != "WandbLogger":
            lg.save()
            continue
        run = lg.experiment
        for name, values in traces.items():
            for step, value in enumerate(values):  # e.g. POO after greedy (step 0) and after each exchange
                run.log({f"{name}": value, f"{name}_step": step})
        run.summary.update({k: float(v) for k, v in metrics.items()})
        if artifact is not None and artifact.exists():
            import wandb

            art = wandb.Artifact(name=f"selection-{run.id}", type="selection")
            art.add_file(str(artifact))
            run.log_artifact(art)


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
