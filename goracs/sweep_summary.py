"""What a multirun ended with: one ``job_outcome.json`` per job, and a summary with a non-zero exit on failure.

Every job of a multirun writes ``<job folder>/job_outcome.json`` (``status``: ok | skipped | failed, and the error),
whatever happened, even a config error before ``metrics.json`` exists. :class:`SweepSummary`, a Hydra callback
(``conf/hydra/default.yaml``), reads the outcomes written since the sweep started once every job is done, prints
one line per job and the totals, and ends the process with exit status 1 when any job failed. A failed job never
stops the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from goracs.cache import atomic_write

FILENAME = "job_outcome.json"


def write_outcome(job_dir: str | Path, status: str, error: BaseException | None = None) -> None:
    """Record a job's outcome (``ok``, ``skipped`` by resume, or ``failed`` with its error) in its folder."""
    text = json.dumps({"status": status, "error": f"{type(error).__name__}: {error}" if error else None,
                       "time": time.time()})
    atomic_write(Path(job_dir) / FILENAME, lambda p: p.write_text(text + "\n"))


def read_outcomes(sweep_dir: str | Path, since: float) -> list[tuple[Path, dict]]:
    """(job folder, outcome) of every outcome under ``sweep_dir`` written at or after ``since`` (epoch seconds)."""
    found = []
    for path in sorted(Path(sweep_dir).rglob(FILENAME)):
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if outcome.get("time", 0) >= since:
            found.append((path.parent, outcome))
    return found


class SweepSummary(Callback):
    """Prints the sweep's outcomes after the last job and exits 1 when one failed (single runs are left alone)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # outcome times come from the same clock; a second of slack

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        outcomes = read_outcomes(config.hydra.sweep.dir, getattr(self, "started", 0.0))
        counts = {s: sum(o["status"] == s for _, o in outcomes) for s in ("ok", "skipped", "failed")}
        lines = [f"\nsweep {config.hydra.sweep.dir}: {counts['ok']} ok, {counts['skipped']} skipped (already done), "
                 f"{counts['failed']} failed"]
        for folder, outcome in outcomes:
            error = f"  {outcome['error']}" if outcome.get("error") else ""
            lines.append(f"  {outcome['status']:<7} {folder}{error}")
        print("\n".join(lines))  # the CLI's final summary
        if counts["failed"]:
            raise SystemExit(1)
