"""Calibration and power of goracs-report's seed-aware test on simulated sweeps (docs/statistics.md quotes it).

    python experiments/calibrate_report.py [--sims 2000] [--json-out docs/statistics_calibration.json]

Scenarios use the magnitudes of the committed cpu_compare tables: 100 test users with ~5 rows each (~500 rows),
10 methods per budget (the reference and 9 others), per-row sd of a method difference ≈ 0.026 nats (a method x row
part of 0.012 per method and seed x row noise of 0.014 per job, half of each shared within a user), seed sd
0.0013-0.009 nats. Printed: the false-positive rate and coverage under the null, and the power at the table's
differences 0.002-0.027 nats, unadjusted (α = 0.05) and at the Bonferroni level 0.05/18 (18 comparisons per
table, a lower bound on Holm's power for the largest effect). Simulation: goracs.report.calibration.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from goracs.report.calibration import calibrate

ROW = dict(method_row_sd=0.012, seed_row_sd=0.014)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows = []
    for seed_sd in (0.0013, 0.003, 0.009):
        for seeds in (2, 3, 5, 10):
            null = calibrate(np.random.default_rng([seeds, int(seed_sd * 1e4)]), args.sims, 10, seeds,
                             seed_sd=seed_sd, **ROW)
            line = {"seed_sd": seed_sd, "seeds": seeds, "fpr": null["reject"], "coverage": null["coverage"]}
            for effect in (0.002, 0.004, 0.008, 0.027):
                rng = np.random.default_rng([seeds, int(seed_sd * 1e4), int(effect * 1e3)])
                line[f"power@{effect}"] = calibrate(rng, args.sims, 10, seeds, effect=effect, seed_sd=seed_sd,
                                                    **ROW)["reject"]
                rng = np.random.default_rng([seeds, int(seed_sd * 1e4), int(effect * 1e3)])
                line[f"power_bonf@{effect}"] = calibrate(rng, args.sims, 10, seeds, effect=effect, seed_sd=seed_sd,
                                                         alpha=0.05 / 18, **ROW)["reject"]
            rows.append(line)
            print(" ".join(f"{k}={v:.4g}" for k, v in line.items()), flush=True)
    print(f"wall {time.perf_counter() - t0:.1f} s, cpu {time.process_time() - cpu0:.1f} s, sims {args.sims}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"sims": args.sims, "methods": 10, "users": 100, **ROW, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
