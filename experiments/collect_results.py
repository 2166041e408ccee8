"""Commit a sweep as data: copy each job's records into ``experiments/results/<study>/`` with a manifest.

    python experiments/collect_results.py SWEEP_DIR DEST --command "goracs-run -m experiment=cpu_compare" ...

For every ``metrics.json`` under ``SWEEP_DIR`` (recursive; a Hydra sweep: ``<sweep>/<job dir>/metrics.json``) the
job folder is re-created under ``DEST`` with the same relative path, holding

* ``metrics.json``, copied byte for byte;
* ``test_outputs.parquet``, re-written with ``--compression`` (default zstd) after reading it with hive partitioning
  off (Hydra's ``budget=16,seed=0,...`` folder names would otherwise add columns); same rows, columns and values.

Nothing else is copied: no adapters, checkpoints, caches, exports or W&B files. ``DEST/manifest.json`` records the
git sha (and whether the tree was dirty), the exact ``--command`` lines (repeatable, in order), the machine (CPU
model, ``torch.backends.cpu.get_cpu_capability()``, logical cores, RAM, OS, Python), the UTC date, the job count by
status and every copied file with its size and SHA-256. The sweep's own records are copied when present:
``multirun.yaml`` (Hydra's record of the sweep) and ``optimization_results.yaml`` (an Optuna search's best value and
parameters, e.g. ``hparams_search=goracs_lam``). An existing non-empty ``DEST`` is refused unless ``--force`` (then it
is replaced).
Exit code 2 with one line on a user error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("goracs.collect_results")

RECORDS = "test_outputs.parquet"
MAX_FILE_BYTES = 1 << 20  # the repository's limit for a committed file

SWEEP_RECORDS = ("multirun.yaml", "optimization_results.yaml")  # the sweep's own files, beside its job folders


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = collect(args.sweep_dir, args.dest, args.command, args.compression, args.force)
    except ValueError as err:
        print(f"collect_results: error: {err}", file=sys.stderr)
        return 2
    print(f"collected {manifest['jobs']} jobs ({manifest['status']}) into {args.dest}; manifest.json written")
    return 0


def collect(sweep_dir: Path, dest: Path, commands: Sequence[str], compression: str = "zstd",
            force: bool = False) -> dict:
    """Copy the records of every job under ``sweep_dir`` into ``dest`` and write ``dest/manifest.json``."""
    import pyarrow.parquet as pq

    sweep_dir, dest = Path(sweep_dir), Path(dest)
    if not sweep_dir.is_dir():
        raise ValueError(f"SWEEP_DIR {sweep_dir} is not a folder")
    jobs = sorted(sweep_dir.rglob("metrics.json"))
    if not jobs:
        raise ValueError(f"SWEEP_DIR {sweep_dir}: no metrics.json under it (not a goracs-run sweep?)")
    if not commands:
        raise ValueError("--command: give the exact commands that produced the sweep (repeatable)")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise ValueError(f"DEST {dest} exists and is not empty (pass --force to replace it)")
        shutil.rmtree(dest)
    files, status = [], {}
    for metrics in jobs:
        job = metrics.parent.relative_to(sweep_dir)
        record = json.loads(metrics.read_text(encoding="utf-8"))
        status[record.get("status", "?")] = status.get(record.get("status", "?"), 0) + 1
        target = dest / job
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics, target / "metrics.json")
        files.append(target / "metrics.json")
        if (metrics.parent / RECORDS).is_file():
            table = pq.read_table(metrics.parent / RECORDS, partitioning=None)
            pq.write_table(table, target / RECORDS, compression=compression)
            files.append(target / RECORDS)
    for record in SWEEP_RECORDS:
        if (sweep_dir / record).is_file():
            shutil.copyfile(sweep_dir / record, dest / record)
            files.append(dest / record)
    too_big = [f for f in files if f.stat().st_size > MAX_FILE_BYTES]
    if too_big:
        log.warning("%d file(s) exceed 1 MiB and must not be committed as they are, e.g. %s", len(too_big),
                    too_big[0])
    manifest = {"study": dest.name, "source": str(sweep_dir.resolve()), "created_at": _now(),
                "git": _git(), "commands": list(commands), "machine": machine(), "jobs": len(jobs),
                "status": status, "compression": compression,
                "files": [{"path": str(f.relative_to(dest)), "bytes": f.stat().st_size, "sha256": _sha256(f)}
                          for f in files]}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def machine() -> dict:
    """CPU model, torch's CPU capability (``None`` without torch), logical cores, RAM, OS and Python."""
    cpu = platform.processor() or None
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        capability = None
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        ram = None
    return {"cpu": cpu, "torch_cpu_capability": capability, "cores": os.cpu_count(), "ram_gib": ram,
            "os": platform.platform(), "python": platform.python_version()}


def _git() -> dict:
    repo = Path(__file__).resolve().parents[1]

    def run(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *cmd], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"sha": run("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="collect_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (goracs-run -m output)")
    parser.add_argument("dest", type=Path, help="experiments/results/<study>")
    parser.add_argument("--command", action="append", default=[], help="an exact command behind the sweep, "
                        "repeatable, in order (goracs-run and goracs-report lines)")
    parser.add_argument("--compression", default="zstd", choices=("zstd", "gzip", "snappy"),
                        help="parquet compression of the copied records (default: zstd)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DEST")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
