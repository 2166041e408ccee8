"""Scaling of the three GORACS stages with N (pool), M (validation) and n (budget); table, fitted exponents, plot.

    python experiments/scaling_goracs.py [--out docs/bench_goracs_scaling]   # ~5-10 min on 2 busy cores

Inputs: ``../shared/bench/make_bench_features.py`` (seed 0, d = 128) at every (N, M); one axis varies at a time
around the base point N = 10,000, M = 1,000, n = 250 (λ 0.1). Per point, in one process, CPU seconds
(``time.process_time``, steadier than wall time on a shared machine) of:

- **greedy**: the lazy facility-location greedy on the built cost (cost matrix excluded, timed apart as ``cost``);
- **fill**: :func:`~goracs.selection.goracs.fill.ot_fill` of the last 2/3 of the budget from the greedy's first
  third (one fresh EMD of the prefix's bound, then re-optimised batches);
- **refine**: 10 exchanges of ``goracs_corrected`` (corrected pruning, pairs by bound, warm duals), per exchange.

Writes ``<out>.json`` (rows) and ``<out>.png`` (log-log, one panel per axis) and prints a table with the fitted
exponents (least squares of log time on log size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAKE = ROOT.parent / "shared" / "bench" / "make_bench_features.py"
BASE = dict(N=10000, M=1000, n=250)
AXES = {"N": [5000, 10000, 20000, 40000], "M": [500, 1000, 2000, 4000], "n": [125, 250, 500, 1000]}
# Leading terms (per call): cost O(NMd); lazy greedy O(NM) per heap refresh, O(nNM) worst case; the fill O(NM) per
# batch (insertion estimates over the pool) x log n batches + shortest paths; an exchange O(NM) pruning pass (often
# skipped by the row-min cache) + O(k M) per Dijkstra pass, k rows reached.
THEORY = {"cost": {"N": 1, "M": 1, "n": 0}, "greedy": {"N": 1, "M": 1, "n": 1}, "fill": {"N": 1, "M": 1, "n": 1},
          "refine/exchange": {"N": 1, "M": 1, "n": 0}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "bench_goracs_scaling"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    _measure(N=2000, M=200, n=50)  # warm-up: numba loads its compiled kernels, torch its threads
    rows = []
    for axis, values in AXES.items():
        for value in values:
            point = dict(BASE, **{axis: value})
            rows.append(dict(axis=axis, **point, **_measure(**point)))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    print(_table(rows))
    _plot(rows, args.out + ".png")


def _inputs(n_train: int, n_valid: int) -> Path:
    out = ROOT / "outputs" / "bench" / f"n{n_train}_m{n_valid}_d128"
    if not (out / "meta.json").exists():
        subprocess.run([sys.executable, str(MAKE), "--out", str(out), "--n-train", str(n_train), "--n-valid",
                        str(n_valid), "--dim", "128", "--seed", "0"], check=True, capture_output=True)
    return out


def _measure(N: int, M: int, n: int) -> dict:
    import torch

    from goracs.selection.goracs.cost import build_cost
    from goracs.selection.goracs.fill import ot_fill
    from goracs.selection.goracs.greedy import greedy_init
    from goracs.selection.goracs.ot import ExactOT
    from goracs.selection.goracs.refine import refine

    data = _inputs(N, M)
    x, y, g = (np.load(data / f"{k}.npy") for k in ("train_emb", "valid_emb", "grad_norm"))
    t0 = time.process_time()
    cost = build_cost(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g / g.max()).float(), 0.1,
                      normalize_dist=True, chunk_size=4096).values
    t1 = time.process_time()
    picks = greedy_init(cost, n, chunk_size=4096)
    t2 = time.process_time()
    filled, _ = ot_fill(cost, picks[: n // 3], n, chunk_size=4096)
    t3 = time.process_time()
    out = refine(cost, picks, ExactOT(), max_iters=10, cut_num=30, pruning="corrected", screen=True,
                 pair_order="bound", chunk_size=4096, duals="warm")
    t4 = time.process_time()
    return {"cost": t1 - t0, "greedy": t2 - t1, "fill": t3 - t2,
            "refine/exchange": (t4 - t3) / max(out.accepted, 1), "accepted": out.accepted}


def _fit(rows: list[dict], axis: str, stage: str) -> float:
    pts = [(r[axis], r[stage]) for r in rows if r["axis"] == axis and r[stage] > 0]
    xs, ys = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(xs, ys, 1)[0])


def _table(rows: list[dict]) -> str:
    stages = list(THEORY)
    lines = ["| axis | value | " + " | ".join(f"{s} CPU s" for s in stages) + " |",
             "|---|---|" + "---|" * len(stages)]
    for r in rows:
        lines.append(f"| {r['axis']} | {r[r['axis']]:,} | " + " | ".join(f"{r[s]:.3g}" for s in stages) + " |")
    lines += ["", "| stage | " + " | ".join(f"exponent in {a} (fitted / theory)" for a in AXES) + " |",
              "|---|" + "---|" * len(AXES)]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{_fit(rows, a, s):.2f} / {THEORY[s][a]}" for a in AXES) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=80)
    for ax, axis in zip(axes, AXES):
        for stage in THEORY:
            pts = [(r[axis], r[stage]) for r in rows if r["axis"] == axis]
            ax.loglog(*zip(*pts), marker="o", label=f"{stage} ({_fit(rows, axis, stage):.2f})")
        ax.set_xlabel(axis)
        ax.set_title(f"vary {axis} (others {', '.join(f'{k}={v}' for k, v in BASE.items() if k != axis)})",
                     fontsize=8)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("CPU s")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
