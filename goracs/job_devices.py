"""One GPU per job when a launcher runs a sweep's jobs side by side on one machine (``hydra/launcher=joblib``).

Such jobs run in worker processes that all see every GPU, and each would use ``cuda:0``. :func:`pin_job_device`,
called at the start of every job before torch touches CUDA, gives the job's process one device of the visible ones
(``CUDA_VISIBLE_DEVICES``, else every GPU NVML counts) and narrows ``CUDA_VISIBLE_DEVICES`` to it, so that ``cuda``
in every stage means that device. The device is the job number's (``job.num % n``); when a worker still holds it
(jobs finish out of order), the next free one: each process claims its device with an exclusive lock on
``<sweep dir>/.devices/<device>.lock``, held for the process's life. A worker that runs several jobs keeps the
device it claimed first (CUDA reads ``CUDA_VISIBLE_DEVICES`` once per process). With more parallel jobs than
GPUs, a job shares the job number's device (with a warning). Jobs of Hydra's basic launcher (one after another in one
process) and jobs whose trainer asks for several devices are left as they are.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, MutableMapping, Sequence

from hydra.types import RunMode

log = logging.getLogger(__name__)

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
ORIGINAL = "GORACS_SWEEP_DEVICES"  # the devices a worker saw before its first job narrowed CUDA_VISIBLE_DEVICES
_CLAIMS: dict[str, tuple[Any, str]] = {}  # lock folder -> (open lock file, device) of this process


def visible_devices(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand out: the list saved at its first pin, else ``CUDA_VISIBLE_DEVICES``, else
    ``0..n-1`` for the n GPUs NVML counts (without initialising CUDA); ``[]`` when none is known."""
    environ = os.environ if environ is None else environ
    for name in (ORIGINAL, "CUDA_VISIBLE_DEVICES"):
        if environ.get(name) is not None:
            return [d.strip() for d in environ[name].split(",") if d.strip()]
    try:
        import torch

        count = torch.cuda._device_count_nvml()  # NVML: CUDA_VISIBLE_DEVICES can still be set afterwards
    except Exception:
        count = -1
    return [str(i) for i in range(count)] if count > 0 else []


def claim_device(job_num: int, devices: Sequence[str], lock_dir: Path) -> str:
    """The device this process runs on: the one it claimed before, else the first free one from the job number's
    (``devices[job_num % n]``, then the next ones), locked for the process's life; the job number's when every
    device is held."""
    key = str(Path(lock_dir).resolve())
    if key in _CLAIMS:
        return _CLAIMS[key][1]
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    n = len(devices)
    for step in range(n):
        device = devices[(job_num + step) % n]
        handle = open(Path(lock_dir) / f"{device}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _CLAIMS[key] = (handle, device)
        return device
    device = devices[job_num % n]
    log.warning("job %d: all %d devices are held by other jobs (more parallel jobs than GPUs); it shares device %s",
                job_num, n, device)
    return device


def pin_job_device(hydra_cfg: Any, trainer_devices: Any = 1,
                   environ: MutableMapping[str, str] | None = None) -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this job's device when ``hydra_cfg`` (the job's Hydra config) is a sweep
    job of a launcher that runs jobs side by side; returns the device, or None when the job is left alone (one
    process runs the jobs, a single GPU or none, or the job's trainer wants several devices: ``trainer_devices``)."""
    environ = os.environ if environ is None else environ
    launcher = str((hydra_cfg.launcher or {}).get("_target_", BASIC_LAUNCHER))
    if hydra_cfg.mode != RunMode.MULTIRUN or launcher == BASIC_LAUNCHER:
        return None
    devices = visible_devices(environ)
    if len(devices) < 2:
        return None
    several = trainer_devices == -1 or (isinstance(trainer_devices, list) and len(trainer_devices) > 1) or (
        isinstance(trainer_devices, int) and not isinstance(trainer_devices, bool) and trainer_devices > 1)
    if several:
        log.warning("job %s asks for trainer.lightning.devices=%s: not pinned to one of the %d GPUs",
                    hydra_cfg.job.num, trainer_devices, len(devices))
        return None
    environ.setdefault(ORIGINAL, ",".join(devices))
    device = claim_device(int(hydra_cfg.job.num), devices, Path(hydra_cfg.sweep.dir) / ".devices")
    environ["CUDA_VISIBLE_DEVICES"] = device
    log.info("job %s runs on GPU %s (CUDA_VISIBLE_DEVICES=%s; %d GPUs for the sweep's parallel jobs)",
             hydra_cfg.job.num, device, device, len(devices))
    return device
