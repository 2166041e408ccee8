"""One job per job under launchers that run the script once per rank: who owns the job, and what the others get.

Lightning's ``ddp`` and FSDP strategies (not ``ddp_spawn``) start the fit by re-executing ``goracs-run`` with the
same overrides once per further local rank (``LOCAL_RANK=1..``); ``torchrun`` and SLURM start every rank from the
beginning (``RANK``, ``SLURM_PROCID``). Rank 0 owns the job: data, features, selection, the exports,
``metrics.json``, the adapter and the evaluation. Before its fit it hands the selection to the other ranks
(:func:`hand_over`: ``ranks/selection.json`` in the job folder, with the job's config key); another rank reads the
samples rank 0 cached, waits for that hand-off (:func:`take_over`), joins the fit and returns, writing nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from goracs.cache import atomic_write

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
HANDOFF = Path("ranks") / "selection.json"


def process_rank(environ: Mapping[str, str] | None = None) -> int:
    """0 when this process owns the job; else the first non-zero rank the launcher's variables give."""
    environ = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value and value.lstrip("-").isdigit() and int(value) != 0:
            return int(value)
    return 0


def runs_several_processes(lightning: Mapping[str, Any]) -> bool:
    """Whether the fit's Lightning trainer node asks for more than one process (devices x nodes)."""
    devices, nodes = lightning.get("devices", 1), lightning.get("num_nodes", 1)
    several_devices = devices == -1 or (isinstance(devices, list) and len(devices) > 1) or (
        isinstance(devices, int) and not isinstance(devices, bool) and devices > 1)
    return several_devices or (isinstance(nodes, int) and nodes > 1)


def hand_over(out_dir: Path, config_key: str, indices) -> Path:
    """Rank 0: write the selected training rows for the other ranks (atomically); returns the file."""
    path = Path(out_dir) / HANDOFF
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"config_key": config_key, "indices": [int(i) for i in indices]})
    atomic_write(path, lambda p: p.write_text(text))
    return path


def take_over(out_dir: Path, config_key: str, *, poll_s: float = 1.0, timeout_s: float | None = None) -> list[int]:
    """Another rank: the indices rank 0 handed over for this job (``config_key``), waiting for them (a rank started
    with rank 0, under torchrun, waits out its data, features and selection). Raises when rank 0's ``metrics.json``
    says it failed, or after ``timeout_s``."""
    path, record = Path(out_dir) / HANDOFF, Path(out_dir) / "metrics.json"
    start, said = time.monotonic(), 0.0
    while True:
        try:
            handed = json.loads(path.read_text())
            if handed.get("config_key") == config_key:
                return list(handed["indices"])
        except (OSError, ValueError):
            pass
        try:
            status = json.loads(record.read_text())
            if status.get("config_key") == config_key and status.get("status") == "failed":
                raise RuntimeError(f"rank 0 failed this job ({record}): {status.get('error')}")
        except (OSError, ValueError):
            pass
        waited = time.monotonic() - start
        if timeout_s is not None and waited > timeout_s:
            raise TimeoutError(f"no selection from rank 0 in {path} after {waited:.0f} s")
        if waited - said > 300:
            log.info("waiting for rank 0's selection (%s), %.0f s so far", path, waited)
            said = waited
        time.sleep(poll_s)
