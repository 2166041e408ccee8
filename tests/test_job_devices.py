"""One GPU per job when a launcher runs a sweep's jobs side by side (goracs.job_devices), with mocked devices: the
job number picks the device, a device a live worker holds is skipped, and the job's CUDA_VISIBLE_DEVICES is narrowed
to the one it got."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hydra.types import RunMode

from goracs import job_devices
from goracs.job_devices import BASIC_LAUNCHER, claim_device, pin_job_device, visible_devices

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a process that has claimed nothing (the claims of a real worker last its life)."""
    monkeypatch.setattr(job_devices, "_CLAIMS", {})


def _hydra(num: int, sweep_dir, launcher: str = JOBLIB, mode=RunMode.MULTIRUN):
    return SimpleNamespace(mode=mode, launcher={"_target_": launcher}, job=SimpleNamespace(num=num),
                           sweep=SimpleNamespace(dir=str(sweep_dir)))


def _as_new_worker():
    """Forget this process's claim but keep its lock open: the next call acts as another live worker process."""
    kept = dict(job_devices._CLAIMS)
    job_devices._CLAIMS.clear()
    return kept


def test_parallel_jobs_each_get_their_own_gpu_from_the_job_number(tmp_path):
    got = []
    held = []
    for num in range(4):
        env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
        got.append((pin_job_device(_hydra(num, tmp_path), 1, env), env["CUDA_VISIBLE_DEVICES"]))
        held.append(_as_new_worker())
    assert got == [("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")]


def test_the_visible_list_is_what_is_handed_out(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,6"}
    assert pin_job_device(_hydra(1, tmp_path), 1, env) == "6"
    assert env == {"CUDA_VISIBLE_DEVICES": "6", "GORACS_SWEEP_DEVICES": "4,6"}


def test_a_device_still_held_by_another_worker_is_skipped(tmp_path):
    devices, locks = ["0", "1", "2"], tmp_path / ".devices"
    assert claim_device(0, devices, locks) == "0"
    first = _as_new_worker()
    assert claim_device(1, devices, locks) == "1"
    second = _as_new_worker()
    # Job 3 would take device 0 (3 % 3), but the first worker still runs on it: the next free one.
    assert claim_device(3, devices, locks) == "2"
    assert first and second


def test_a_worker_keeps_its_device_for_its_later_jobs(tmp_path):
    devices, locks = ["0", "1"], tmp_path / ".devices"
    assert claim_device(1, devices, locks) == "1"
    assert claim_device(2, devices, locks) == "1"  # CUDA was set up for device 1 in this process


def test_more_jobs_than_gpus_share_the_job_numbers_device(tmp_path, caplog):
    devices, locks, held = ["0", "1"], tmp_path / ".devices", []
    for num in range(2):
        claim_device(num, devices, locks)
        held.append(_as_new_worker())
    assert claim_device(3, devices, locks) == "1"
    assert "more parallel jobs than GPUs" in caplog.text


def test_a_released_device_is_taken_again(tmp_path):
    devices, locks = ["0", "1"], tmp_path / ".devices"
    claim_device(0, devices, locks)
    (handle, _), = _as_new_worker().values()
    handle.close()  # that worker has exited: its lock is gone
    assert claim_device(2, devices, locks) == "0"


@pytest.mark.parametrize("case", ["basic launcher", "single run", "one gpu", "multi-device trainer"])
def test_jobs_that_need_no_pinning_are_left_alone(case, tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0" if case == "one gpu" else "0,1"}
    hydra = _hydra(1, tmp_path, launcher=BASIC_LAUNCHER if case == "basic launcher" else JOBLIB,
                   mode=RunMode.RUN if case == "single run" else RunMode.MULTIRUN)
    devices = 2 if case == "multi-device trainer" else 1
    assert pin_job_device(hydra, devices, env) is None
    assert "GORACS_SWEEP_DEVICES" not in env and env["CUDA_VISIBLE_DEVICES"] in ("0", "0,1")


def test_without_cuda_visible_devices_nvml_counts_the_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 3)
    assert visible_devices({}) == ["0", "1", "2"]
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1)
    assert visible_devices({}) == []
