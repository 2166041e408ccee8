"""The per-job ``metrics.json``: one flat, self-describing JSON object per run (style.md B5).

Keys: ``data, task, model, selection, budget, seed, experiment, status, error, test/*, select/*, time/*_s,
n_selected, config_key, overrides, git_sha, versions, created_at, run_dir``. It is rewritten atomically at each
stage boundary, so a killed job leaves a readable file with ``status: running``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from goracs.cache import atomic_write, config_key

PACKAGES = ("goracs", "torch", "transformers", "peft", "lightning", "hydra-core", "numpy", "pandas", "POT",
            "geomloss", "wandb")


class RunRecord:
    """Accumulates a job's identity, metrics and timings, and writes them to ``<run_dir>/metrics.json``."""

    def __init__(self, run_dir: Path, identity: dict[str, Any], job_config: dict[str, Any], overrides: list[str],
                 repo_root: Path):
        self.path = Path(run_dir) / "metrics.json"
        self.data: dict[str, Any] = {
            **identity,
            "status": "running",
            "config_key": job_key(job_config),
            "overrides": list(overrides),
            "git_sha": git_sha(repo_root),
            "versions": package_versions(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(Path(run_dir).resolve()),
        }

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

    def update(self, values: dict[str, Any]) -> None:
        self.data.update({k: _jsonable(v) for k, v in values.items()})
        self.write()

    def write(self) -> None:
        text = json.dumps(self.data, indent=2, sort_keys=False, allow_nan=True)
        atomic_write(self.path, lambda p: p.write_text(text + "\n"))


def job_key(job_config: dict[str, Any]) -> str:
    """Hash of the resolved job config without the keys that do not change results (logger, paths, resume)."""
    ignored = ("logger", "paths", "resume", "hydra", "tags", "experiment_name")
    relevant = {k: v for k, v in job_config.items() if k not in ignored}
    return config_key(relevant)


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
