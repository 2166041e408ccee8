"""Selection time and peak memory of every method in ``conf/selection/`` on synthetic features.

Each (method, N) job runs in a fresh process: it builds the features, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs ``select`` and reports the selector's ``time_s`` (wall clock), the process CPU time
(all threads; less sensitive to other load on a shared machine) and the peak resident memory above the features' own
footprint. Features imitate the real ones: L2-normalised clustered "sentence embeddings"
(train N×d, valid M×d), lognormal gradient norms, EL2N in [0, √2), gamma-distributed losses; no labels (SeqRec).

Usage:
    python experiments/bench_selection.py                      # N = 10,000 and 150,000, d = 384, budget 1024
    python experiments/bench_selection.py --quick              # N = 2,000, budget 100: a smoke run of about a minute
    python experiments/bench_selection.py --skip-goracs-above 10000 --output docs/bench_selection_table.md
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np

CONF = Path(__file__).parents[1] / "conf" / "selection"
log = logging.getLogger("bench_selection")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    methods = args.methods or sorted(p.stem for p in CONF.glob("*.yaml"))
    sizes = [2000] if args.quick else args.sizes
    if args.quick:
        args.budget = min(args.budget, 100)
    rows = []
    for n in sizes:
        for method in methods:
            if method == "goracs" and args.skip_goracs_above is not None and n > args.skip_goracs_above:
                rows.append({"method": method, "n": n, "status": "skipped (--skip-goracs-above)"})
                continue
            log.info("%s at N=%d ...", method, n)
            rows.append(run_job(method, n, args))
            log.info("-> %s", rows[-1])
    table = markdown_table(rows, args)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 150_000], help="pool sizes N")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension d")
    p.add_argument("--valid", type=int, default=2000, help="validation samples M (GORACS reads them)")
    p.add_argument("--budget", type=int, default=1024, help="samples to select")
    p.add_argument("--methods", nargs="+", help="yaml names in conf/selection (default: all)")
    p.add_argument("--skip-goracs-above", type=int, help="skip GORACS for pools larger than this")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds before a job is killed")
    p.add_argument("--quick", action="store_true", help="N = 2,000 and budget <= 100 only")
    p.add_argument("--output", help="also write the markdown table to this file")
    return p.parse_args()


def run_job(method: str, n: int, args: argparse.Namespace) -> dict:
    """Run one selection in a fresh process; returns a row for the table."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=job, args=(method, n, args.dim, args.valid, args.budget, queue))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"method": method, "n": n, "status": f"timeout > {args.timeout:.0f} s"}
    if queue.empty():
        return {"method": method, "n": n, "status": f"crashed (exit code {proc.exitcode})"}
    return queue.get()


def job(method: str, n: int, dim: int, n_valid: int, budget: int, queue) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from goracs.selection import Pool

    logging.basicConfig(level=logging.WARNING)
    pool = Pool(size=n, features=synthetic_features(n, n_valid, dim, seed=0))
    selector = instantiate(OmegaConf.load(CONF / f"{method}.yaml"))
    for name in ("text_emb", "grad_norm", "el2n", "loss", "influence"):  # touch everything so only selection work is measured
        pool.features.get(name)
    base = reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = selector.select(pool, budget, seed=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    queue.put({"method": method, "n": n, "status": "ok", "time_s": result.stats.get("time_s", wall), "wall_s": wall,
               "cpu_s": cpu, "peak_mib": (peak_rss() - base) / 2**20, "n_selected": len(result.indices)})


def synthetic_features(n: int, m: int, dim: int, seed: int):
    from goracs.selection import ArrayFeatures

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim), dtype=np.float32)

    def embed(count: int) -> np.ndarray:
        x = centres[rng.integers(50, size=count)] + 0.7 * rng.standard_normal((count, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = {"text_emb": embed(n), "grad_norm": rng.lognormal(-0.6, 0.3, n).astype(np.float32),
             "el2n": (np.sqrt(2) * rng.beta(2, 3, n)).astype(np.float32),
             "loss": rng.gamma(2.0, 1.0, n).astype(np.float32),
             "influence": rng.standard_normal(n).astype(np.float32)}  # DEALRec: signed, around 0
    return ArrayFeatures(train=train, valid={"text_emb": embed(m)})


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.warning("cannot reset the peak RSS; peak memory includes feature generation")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/self/status")


def markdown_table(rows: list[dict], args: argparse.Namespace) -> str:
    head = (f"d = {args.dim}, M = {args.valid} validation samples, budget = {args.budget}; "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch threads default.\n\n"
            "| method | N | select time (s) | CPU time (s) | peak extra memory (MiB) | selected | status |\n"
            "|---|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['method']} | {r['n']:,} | {r['time_s']:.2f} | {r['cpu_s']:.1f} | "
                         f"{r['peak_mib']:.0f} | {r['n_selected']:,} | ok |")
        else:
            lines.append(f"| {r['method']} | {r['n']:,} | – | – | – | – | {r['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
