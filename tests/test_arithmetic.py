"""dtype: auto — the bf16/fp32 choice by a measured probe, cached per machine, logged once, in the cache keys."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from goracs.errors import ConfigError
from goracs.models import arithmetic
from goracs.models.arithmetic import Bf16Speed, resolve_dtype, settle_dtypes


def _speed(speedup: float) -> Bf16Speed:
    return Bf16Speed(speedup=speedup, fp32_ms=10.0, bf16_ms=10.0 / speedup, shapes="test", threads=1,
                     capability="TEST", measured_at="now")


@pytest.fixture()
def machine(monkeypatch, tmp_path):
    """A machine whose probe says ``speedup`` (set ``machine.speedup``); the per-machine cache under tmp_path and
    the process memo and once-only log cleared, so each test decides afresh."""
    monkeypatch.setenv("GORACS_CACHE_HOME", str(tmp_path / "xdg" / "goracs"))
    monkeypatch.setattr(arithmetic, "_LOGGED", set())
    monkeypatch.setattr(arithmetic, "_MEASURED", {})

    class Machine:
        speedup = 1.0
        probes = 0

    def measure(*_a, **_k):
        Machine.probes += 1
        return _speed(Machine.speedup)

    monkeypatch.setattr(arithmetic, "measure_bf16_speedup", measure)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return Machine


@pytest.mark.parametrize("speedup, chosen", [(40.0, "bfloat16"), (1.25, "bfloat16"), (1.2, "float32"),
                                             (1 / 40, "float32")])
def test_auto_takes_bf16_only_where_it_is_measured_fast(machine, speedup, chosen, caplog):
    machine.speedup = speedup
    with caplog.at_level(logging.INFO, logger="goracs.models.arithmetic"):
        arith = resolve_dtype("auto")
    assert arith.dtype == chosen and arith.bf16_speedup == speedup
    assert [r.getMessage() for r in caplog.records] == [f"backbone: {chosen} ({arith.reason})"]
    if speedup == 1 / 40:
        assert arith.reason == "auto: bf16 matmul 40x slower on this CPU"


def test_decision_is_logged_once_and_measured_once_per_machine(machine, caplog):
    machine.speedup = 1 / 40
    with caplog.at_level(logging.INFO, logger="goracs.models.arithmetic"):
        for _ in range(3):
            resolve_dtype("auto")
        resolve_dtype("float32")  # the backbone built from the job's config, where auto was replaced by its result
    assert len(caplog.records) == 1 and machine.probes == 1
    cached = list((Path(os.environ["GORACS_CACHE_HOME"])).glob("bf16_speed-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["speedup"] == 1 / 40
    arithmetic._MEASURED.clear()  # a new process on the same machine reads the file, it does not measure again
    assert resolve_dtype("auto").dtype == "float32" and machine.probes == 1


def test_explicit_bfloat16_on_a_slow_cpu_runs_after_one_warning(machine, caplog):
    machine.speedup = 1 / 27
    with caplog.at_level(logging.INFO, logger="goracs.models.arithmetic"):
        first, second = resolve_dtype("bfloat16"), resolve_dtype("bfloat16")
    assert first.dtype == second.dtype == "bfloat16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(caplog.records) == len(warnings) == 1
    assert "model.backbone.dtype=bfloat16: bf16 matmuls are 27x slower than float32" in warnings[0].getMessage()


def test_explicit_float32_needs_no_probe_and_bad_values_name_the_option(machine):
    assert resolve_dtype("float32").dtype == "float32" and machine.probes == 0
    with pytest.raises(ConfigError, match=r"model.backbone.dtype='bf16': expected auto"):
        resolve_dtype("bf16")
    from goracs.models.backbone import SmolLM2Backbone

    with pytest.raises(ConfigError, match=r"model.backbone.dtype='half'"):
        SmolLM2Backbone(cache_dir="unused", dtype="half")


def test_cuda_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(arithmetic, "_LOGGED", set())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    for supported, chosen in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported: s)
        assert resolve_dtype("auto", device="cuda").dtype == chosen


def test_effective_dtype_is_in_the_cache_identity(machine, tmp_path):
    """Features computed in bf16 on one machine are never reused for fp32 on another: the backbone spec, hence the
    model fingerprint and every feature/selection key, holds the resolved dtype, and ``auto`` keys like it."""
    from goracs.features.config import FeatureConfig
    from goracs.models.backbone import SmolLM2Backbone

    keys = {}
    for speedup in (3.0, 1 / 30):
        machine.speedup = speedup
        arithmetic._MEASURED.clear()
        for cached in arithmetic.cache_home().glob("*.json"):  # another machine: its own measurement
            cached.unlink()
        auto = SmolLM2Backbone(cache_dir=str(tmp_path), dtype="auto")
        keys[speedup] = auto.spec()
        explicit = SmolLM2Backbone(cache_dir=str(tmp_path), dtype=keys[speedup]["dtype"])
        assert explicit.spec() == auto.spec()
        features = FeatureConfig(dtype="auto")
        assert features.gradient_spec()["dtype"] == keys[speedup]["dtype"]
    assert keys[3.0]["dtype"] == "bfloat16" and keys[1 / 30]["dtype"] == "float32"


def test_settle_dtypes_writes_the_effective_dtype_into_the_job(machine):
    machine.speedup = 1 / 30
    backbone, features = {"dtype": "auto"}, {"dtype": "auto", "device": "cpu"}
    out = settle_dtypes(backbone, features)
    assert backbone["dtype"] == features["dtype"] == "float32"
    assert out["run/dtype"] == "float32" and out["run/features_dtype"] == "float32"
    assert out["run/bf16_speedup"] == pytest.approx(1 / 30, abs=1e-3)
    assert out["run/cpu_capability"].split()[0] == torch.backends.cpu.get_cpu_capability()
    assert settle_dtypes({}, {"dtype": None})["run/dtype"] == "float32"  # tiny_llama: built in float32


def test_machine_key_follows_the_isa_environment(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = arithmetic.machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert arithmetic.machine_key() != native


def test_the_probe_times_both_head_products():
    speed = arithmetic.measure_bf16_speedup(hidden=32, vocab=256, rows=4, repeats=2)
    assert speed.fp32_ms > 0 and speed.bf16_ms > 0
    assert speed.speedup == pytest.approx(speed.fp32_ms / speed.bf16_ms)
    assert speed.threads == torch.get_num_threads()


@pytest.mark.slow
@pytest.mark.skipif("avx512_bf16" not in arithmetic._cpu_flags(), reason="needs a CPU with native bf16")
def test_probe_sees_the_emulated_bf16_path(tmp_path):
    """On a CPU with native bf16, limiting oneDNN to AVX2 (the issue-22 reproduction of an AVX2-only CPU) makes the
    real probe measure bf16 slower than fp32, so auto picks float32; without the limit it picks bfloat16."""
    code = ("import torch; torch.set_num_threads(1); from goracs.models.arithmetic import resolve_dtype as r; "
            "a = r('auto', device='cpu'); print(a.dtype, a.bf16_speedup)")
    chosen = {}
    for isa in (None, "AVX2"):
        env = {**os.environ, "GORACS_CACHE_HOME": str(tmp_path / (isa or "native"))}
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        dtype, speedup = out.stdout.split()
        chosen[isa] = (dtype, float(speedup))
    assert chosen[None][0] == "bfloat16" and chosen["AVX2"][0] == "float32", chosen


@pytest.mark.parametrize("speedup, resolved", [(3.0, "bfloat16"), (1 / 30, "float32")])
def test_auto_job_has_the_key_of_the_dtype_it_resolves_to(machine, tmp_path, speedup, resolved):
    """A sweep made with an explicit dtype (cpu_compare's bf16 jobs) resumes under auto on a machine where auto
    means that dtype: the job's config key is taken after ``auto`` is resolved (goracs.run)."""
    from omegaconf import OmegaConf

    from conftest import compose_run_config
    from goracs.run_record import job_key

    machine.speedup = speedup

    def key(overrides):
        cfg = compose_run_config(overrides, tmp_path / "job", tmp_path / "cache")
        settle_dtypes(cfg.model.backbone, cfg.features)
        return job_key(OmegaConf.to_container(cfg, resolve=True)), cfg.model.backbone.dtype

    auto, explicit = key([]), key([f"model.backbone.dtype={resolved}"])
    assert auto == explicit and auto[1] == resolved
    assert key([f"model.backbone.dtype={'float32' if resolved == 'bfloat16' else 'bfloat16'}"])[0] != auto[0]
