"""Which arithmetic the LLM runs in: ``dtype: auto`` decided by evidence, once per machine.

bf16 weights halve the memory traffic, and where the hardware multiplies bf16 natively (CUDA with bf16 support, a
CPU with AVX512-BF16 or AMX) the LLM's matmuls run 1.6-4x faster than in fp32. Elsewhere oneDNN/ATen emulate bf16
and the LM head's products become 3-67x *slower* (issue 22, a 2-core AVX2 EPYC: ``(85 x 49152) @ (49152 x 576)``
4.9 s in bf16 against 74 ms in fp32). A flag check alone cannot see what the kernels will do (``ONEDNN_MAX_CPU_ISA``,
a torch build without the fast path, a VM hiding flags), so on a CPU :func:`resolve_dtype` times the two LM-head
products of the model, ``h @ Wᵀ`` (logits) and ``p @ W`` (the head's input gradient), in both dtypes on a slice of
the vocabulary (:func:`measure_bf16_speedup`, 0.05-1 s), and picks bf16 only when it is at least
``BF16_MIN_SPEEDUP`` times faster. The measurement is cached per machine (CPU model and flags, torch version,
thread count and the ISA environment variables) under :func:`cache_home` (``$GORACS_CACHE_HOME``, else
``$XDG_CACHE_HOME/goracs``, default ``~/.cache/goracs``), so later runs decide in microseconds. On CUDA the answer
is ``torch.cuda.is_bf16_supported()``.

An explicit ``bfloat16`` is honoured everywhere; on a CPU where the probe finds bf16 slower, it runs after one
warning that says by how much. The effective dtype (never ``auto``) is what the backbones put in their ``spec()``,
so feature caches computed in bf16 on one machine are never reused for fp32 on another, or vice versa.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import MutableMapping

import torch

from goracs.cache import atomic_write
from goracs.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# bf16 costs accuracy (raw gradient features ~4% L2 from fp32, docs/bench_pipeline.md): take it only for a clear gain.
BF16_MIN_SPEEDUP = 1.25
# The CPU flags that mean native bf16 arithmetic, and the environment variables that change which kernels run.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
           "ONEDNN_DEFAULT_FPMATH_MODE")
# The probe's shapes: SmolLM2's head (hidden 576, vocabulary 49,152) on a vocabulary slice, 16 token rows.
PROBE_HIDDEN, PROBE_VOCAB, PROBE_ROWS = 576, 8192, 16

_LOGGED: set[tuple] = set()  # (option, chosen dtype): each decision is logged once per process
_MEASURED: dict[str, "Bf16Speed"] = {}  # machine key -> measurement, for this process


@dataclass(frozen=True)
class Bf16Speed:
    """The probe's result: ``speedup`` = fp32 seconds / bf16 seconds over both head products (> 1: bf16 faster)."""

    speedup: float
    fp32_ms: float
    bf16_ms: float
    shapes: str
    threads: int
    capability: str
    measured_at: str


@dataclass(frozen=True)
class Arithmetic:
    """The dtype a model runs in and why (``reason`` is the one line that is logged)."""

    dtype: str  # float32 | bfloat16 | float16, never auto
    requested: str  # what the config asked for
    device: str  # cpu | cuda
    capability: str  # torch's CPU capability (AVX2, AVX512, ...) plus native bf16 flags, or the CUDA device name
    reason: str
    bf16_speedup: float | None = None  # measured on this CPU; None when not measured (cuda, explicit float32)


def resolve_dtype(requested: str | None, *, option: str = "model.backbone.dtype",
                  device: str | None = None) -> Arithmetic:
    """The effective dtype for ``requested`` (``auto`` or an explicit dtype) on ``device`` (``None``: cuda when
    available, else cpu — what ``features.device=auto`` and the CPU trainer use). Logs the decision once per
    process; warns once when an explicit bfloat16 is measured slower than float32 on this CPU."""
    requested = "auto" if requested is None else str(requested)
    check_dtype(requested, option)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        arith = _on_cuda(requested)
    else:
        arith = _on_cpu(requested)
    # Keyed by the outcome: goracs-run writes the resolved dtype back into the config, and the backbone built from it
    # resolves again (explicitly, now); that is the same decision, not a second one to log.
    key = (option, arith.dtype)
    if key not in _LOGGED:
        _LOGGED.add(key)
        if requested == "bfloat16" and arith.bf16_speedup is not None and arith.bf16_speedup < 1 / BF16_MIN_SPEEDUP:
            log.warning("%s=bfloat16: bf16 matmuls are %.0fx slower than float32 on this CPU (%s), so the LLM "
                        "stages will take up to that many times longer; %s=auto (the default) or float32 runs them "
                        "in float32 here", option, 1 / arith.bf16_speedup, arith.capability, option)
        else:
            log.info("%s: %s (%s)", option.removesuffix(".dtype").split(".")[-1], arith.dtype, arith.reason)
    return arith


def check_dtype(value: str | None, option: str) -> None:
    """A :class:`ConfigError` naming ``option`` unless ``value`` is one of :data:`DTYPES`."""
    if value not in DTYPES:
        raise ConfigError(f"{option}={value!r}: expected auto (bf16 where this machine multiplies it fast, else "
                          "float32), float32, bfloat16 or float16")


def cpu_capability() -> str:
    """torch's vector ISA (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...) and the CPU's native
    bf16 flags, e.g. ``AVX512 +avx512_bf16`` or ``AVX2``."""
    flags = [f for f in BF16_FLAGS if f in _cpu_flags()]
    return " ".join([torch.backends.cpu.get_cpu_capability(), *(f"+{f}" for f in flags)])


def measure_bf16_speedup(hidden: int = PROBE_HIDDEN, vocab: int = PROBE_VOCAB, rows: int = PROBE_ROWS,
                         repeats: int = 5) -> Bf16Speed:
    """Time the LM head's two products, ``h @ Wᵀ`` ((rows, hidden) x (hidden, vocab)) and ``p @ W``
    ((rows, vocab) x (vocab, hidden)), in fp32 and bf16 on this CPU; the fastest of ``repeats`` runs each (the least
    disturbed by other processes), after one warm-up. bf16 stops early once it is clearly slower: on an AVX2 CPU one
    call already says so (about 0.15 s at these shapes), so the probe stays well under a second everywhere."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(vocab, hidden, generator=g)
    h = torch.randn(rows, hidden, generator=g)
    p = torch.softmax(torch.randn(rows, vocab, generator=g), dim=1)
    seconds = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        wd, hd, pd = w.to(dt), h.to(dt), p.to(dt)

        def both():
            t0 = time.perf_counter()
            hd @ wd.t()
            pd @ wd
            return time.perf_counter() - t0

        both()  # warm-up: first-call kernel selection and page faults
        best = both()
        for _ in range(repeats - 1):
            if name == "bfloat16" and best > 3 * seconds["float32"]:
                break  # the verdict cannot change
            best = min(best, both())
        seconds[name] = best
    return Bf16Speed(speedup=seconds["float32"] / seconds["bfloat16"], fp32_ms=seconds["float32"] * 1e3,
                     bf16_ms=seconds["bfloat16"] * 1e3, shapes=f"({rows}x{hidden})@({hidden}x{vocab}) + "
                     f"({rows}x{vocab})@({vocab}x{hidden})", threads=torch.get_num_threads(),
                     capability=cpu_capability(), measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))


def cached_bf16_speedup() -> Bf16Speed:
    """:func:`measure_bf16_speedup`, measured once per machine (module docstring) and read back afterwards."""
    key = machine_key()
    if key in _MEASURED:
        return _MEASURED[key]
    path = cache_home() / f"bf16_speed-{key}.json"
    speed = None
    if path.is_file():
        try:
            speed = Bf16Speed(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            speed = None  # unreadable or from another version: measure again
    if speed is None:
        speed = measure_bf16_speedup()
        try:
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(speed), indent=1) + "\n"))
        except OSError as e:  # a read-only home must not stop a run; the next one measures again
            log.debug("could not cache the bf16 probe at %s: %s", path, e)
    _MEASURED[key] = speed
    return speed


def machine_key() -> str:
    """What decides the probe's answer: CPU model and flags, torch version and build, threads, ISA variables."""
    parts = {"cpu": _cpu_model(), "flags": sorted(_cpu_flags()), "machine": platform.machine(),
             "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
             "threads": torch.get_num_threads(), "env": {k: os.environ.get(k) for k in ISA_ENV},
             "probe": [PROBE_HIDDEN, PROBE_VOCAB, PROBE_ROWS]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cache_home() -> Path:
    """``$GORACS_CACHE_HOME``, else ``$XDG_CACHE_HOME/goracs`` (default ``~/.cache/goracs``): per machine, not per
    checkout (``outputs/cache`` holds what depends on the checkout's data and models)."""
    if os.environ.get("GORACS_CACHE_HOME"):
        return Path(os.environ["GORACS_CACHE_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "goracs"


def _on_cpu(requested: str) -> Arithmetic:
    capability = cpu_capability()
    if requested in ("float32", "float16"):
        return Arithmetic(requested, requested, "cpu", capability, "as configured")
    speed = cached_bf16_speedup()
    fast = speed.speedup >= BF16_MIN_SPEEDUP
    measured = (f"bf16 matmul {speed.speedup:.1f}x faster on this CPU" if speed.speedup >= 1
                else f"bf16 matmul {1 / speed.speedup:.0f}x slower on this CPU")
    if requested == "bfloat16":
        return Arithmetic("bfloat16", requested, "cpu", capability, f"as configured; {measured}", speed.speedup)
    dtype = "bfloat16" if fast else "float32"
    why = measured if fast or speed.speedup < 1 else f"{measured}, below the {BF16_MIN_SPEEDUP}x that pays for it"
    return Arithmetic(dtype, requested, "cpu", capability, f"auto: {why}", speed.speedup)


def _on_cuda(requested: str) -> Arithmetic:
    name = torch.cuda.get_device_name()
    if requested != "auto":
        return Arithmetic(requested, requested, "cuda", name, "as configured")
    if torch.cuda.is_bf16_supported():
        return Arithmetic("bfloat16", requested, "cuda", name, f"auto: {name} supports bf16")
    return Arithmetic("float32", requested, "cuda", name, f"auto: {name} has no bf16 support")


def _cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def settle_dtypes(backbone: MutableMapping, features: MutableMapping) -> dict:
    """Resolve ``auto`` in a job's ``model.backbone`` and ``features`` nodes in place, so the job's config key, its
    caches and W&B hold the dtype the job really runs in (on this machine ``auto`` and the dtype it resolves to give
    the same key), and return what ``metrics.json`` records: ``run/dtype``, ``run/dtype_reason``,
    ``run/cpu_capability``, plus ``run/bf16_speedup`` when it was measured and ``run/features_dtype`` when
    ``features.dtype`` overrides the backbone's. A backbone without a ``dtype`` option (tiny_llama) runs in float32."""
    if "dtype" in backbone:
        arith = resolve_dtype(backbone["dtype"], option="model.backbone.dtype")
        backbone["dtype"] = arith.dtype
    else:
        arith = Arithmetic("float32", "float32", "cpu", cpu_capability(), "the backbone is built in float32")
    out = {"run/dtype": arith.dtype, "run/dtype_reason": arith.reason, "run/cpu_capability": cpu_capability()}
    if torch.cuda.is_available():
        out["run/cuda_device"] = torch.cuda.get_device_name()
    if arith.bf16_speedup is not None:
        out["run/bf16_speedup"] = round(arith.bf16_speedup, 3)
    if features.get("dtype") is not None:
        device = features.get("device", "auto")
        if features["dtype"] == "auto":
            features["dtype"] = resolve_dtype("auto", option="features.dtype",
                                              device=None if device == "auto" else device).dtype
        out["run/features_dtype"] = features["dtype"]
    return out
