"""Write a simulated pilot sweep at cpu_compare's magnitudes, to try ``goracs-report --plan`` (and the report) on.

    python experiments/simulate_pilot.py OUT [--seeds 3] [--users 100]
    goracs-report OUT --reference random --metric test/loss --plan

Job folders ``budget=B,seed=S,selection=M/`` with ``metrics.json`` and ``test_outputs.parquet`` (columns ``row``,
``user``, ``item``, ``loss``), as goracs-run writes them: methods random, grand, el2n, ccs, d2, moderate, kcenter,
goracs, goracs_corrected at budgets 16 and 32, plus one ``none`` job. Per-row test loss (nats) of method m, seed s::

    loss_msi = base_i + offset_b + effect_mb + α_mi + b_ms + η_msi

``base`` ~ Gamma (mean 2.7, shared by every job), ``α`` the method × row part (sd 0.012), ``η`` seed × row noise
(sd 0.014), half of each shared within a user (``1 + Poisson(4)`` rows per user), ``b`` seed effects with sd
``SEED_SD[budget]``; ``effect`` the committed table's differences to random (``EFFECTS``). The values are
illustrative: they reproduce the order of magnitude of the committed cpu_compare tables, not their data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

SEED_SD = {16: 0.0025, 32: 0.005}
EFFECTS = {  # method -> difference to random at budgets 16, 32 (nats; the committed cpu_compare test/loss table)
    "random": (0.0, 0.0), "grand": (0.0122, 0.0273), "el2n": (-0.0018, 0.0070), "ccs": (-0.0071, 0.0006),
    "d2": (-0.0036, 0.0049), "moderate": (0.0027, 0.0072), "kcenter": (0.0018, 0.0196),
    "goracs": (-0.0082, 0.0037), "goracs_corrected": (-0.0090, 0.0077)}
OFFSET = {16: -0.12, 32: -0.30, "none": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rng-seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.rng_seed)
    rows_per_user = 1 + rng.poisson(4, args.users)
    user = np.repeat(np.arange(args.users), rows_per_user)
    n = user.size

    def clustered(sd: float) -> np.ndarray:
        return sd * (np.sqrt(0.5) * rng.standard_normal(args.users)[user] + np.sqrt(0.5) * rng.standard_normal(n))

    base = rng.gamma(4.0, 2.8 / 4.0, n)
    write = _writer(args.out, user)
    write("none", 0, 0, base + 0.12)
    for method, effects in EFFECTS.items():
        for budget, effect in zip((16, 32), effects):
            alpha = clustered(0.012)
            for seed in range(args.seeds):
                loss = (base + OFFSET[budget] + effect + alpha + rng.normal(0, SEED_SD[budget]) + clustered(0.014))
                write(method, budget, seed, loss)
    print(f"wrote {len(EFFECTS) * 2 * args.seeds + 1} jobs ({n} test rows, {args.users} users) to {args.out}")


def _writer(out: Path, user: np.ndarray):
    def write(method: str, budget: int, seed: int, loss: np.ndarray) -> None:
        folder = out / f"budget={budget},seed={seed},selection={method}"
        folder.mkdir(parents=True, exist_ok=True)
        records = pd.DataFrame({"row": np.arange(loss.size), "user": [f"u{u}" for u in user],
                                "item": [f"i{i % 97}" for i in range(loss.size)], "loss": loss})
        records.to_parquet(folder / "test_outputs.parquet", index=False)
        (folder / "metrics.json").write_text(json.dumps({
            "data": "ml100k", "task": "seqrec", "model": "smollm2", "selection": method, "budget": budget,
            "seed": seed, "status": "ok", "config_key": f"{method}-{budget}-{seed}", "test/loss": float(loss.mean())}))
    return write


if __name__ == "__main__":
    main()
