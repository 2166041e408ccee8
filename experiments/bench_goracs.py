"""Benchmark GORACS selection on the shared synthetic inputs and print one table (see docs/bench_goracs.md).

    python experiments/bench_goracs.py --quick            # CPU-friendly subset (~1-2 min on 2 cores)
    python experiments/bench_goracs.py                    # shape (a) + scale series (~10 min on 2 cores)
    python experiments/bench_goracs.py --paper            # adds N=140k, M=5k, d=768, n=1024 (needs ~4 GiB)
    python experiments/bench_goracs.py --fill [--paper] [--real DIR]   # greedy_fill=index vs ot (saturated shapes)

Inputs come from ``../shared/bench/make_bench_features.py`` (generated on demand under outputs/bench/, sha256 checked
against the values pinned in ../shared/bench/README.md for the shape-(a) inputs). Every configuration runs in a child
process so its wall time and peak RSS are its own; the dense brute-force greedy (official float32 gain on the whole
N x M matrix every step) runs in the same child as the lazy greedy it is compared with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAKE = ROOT.parent / "shared" / "bench" / "make_bench_features.py"
PINNED = {"train_emb": "d74f8f85ef9b9c33", "valid_emb": "964b570e006b801b", "grad_norm": "2fc815c5d4b4d022"}
ANCHOR = "official ITRA (anchor, README): greedy 78.1 s, refine 808 s, total 887 s, POO 0.157714 -> 0.153000, 44/5460"
# Recorded official figures (not re-measured here): shape (a) from ../shared/bench/README.md; the notebook shape
# (15k x 5k x 768, lambda 0.5, n 1000, 10 exchanges) as quoted by issue 24's brief.
OFFICIAL = {"shape (a)": dict(time_s=887.0, poo_final=0.153000, accepted=44, emds=5460),
            "notebook": dict(time_s=316.0, poo_final=0.2926)}
TARGETS = {"shape (a)": 100.0, "notebook": 30.0, "goracs_ot_s": 60.0, "paper_s": 60.0}
log = logging.getLogger("bench_goracs")


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.one:
        print("RESULT " + json.dumps(_run_one(json.loads(args.one))), flush=True)
        return
    rows = []
    configs = []
    if args.targets:
        configs = _target_configs(args)
    elif args.fill:
        configs = _fill_configs(args)
    elif not args.paper_only:
        configs = _shape_a_configs(args)
    if (args.paper or args.paper_only) and not (args.fill or args.targets):
        data = _inputs(n_train=140000, n_valid=5000, dim=768, check=False)
        configs.append(dict(data=str(data), name="paper shape (Games)", budget=1024, lam=0.1, cut_num=30,
                            threads=args.threads,
                            max_iters=100, pruning=args.paper_pruning, pair_order="bound"))
    done = {}
    if args.resume and args.out and Path(args.out).exists():  # keep finished rows of an interrupted study
        done = {r["name"]: r for r in json.loads(Path(args.out).read_text()) if "error" not in r}
    if args.only:  # keep the configurations whose name contains one of the given strings
        configs = [c for c in configs if any(part in c["name"] for part in args.only)]
    kept = [r for name, r in done.items() if name not in {c["name"] for c in configs}]  # other finished rows stay
    for cfg in configs:
        rows.append(done.get(cfg["name"]) or _child(cfg, args.timeout))
        log.info("%s", rows[-1])
        if args.out:  # after every row, so an interrupted study keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(kept + rows, indent=1))
    print(_table(rows))
    print(ANCHOR)
    if args.targets:
        print(_target_summary(kept + rows))


def _shape_a_configs(args) -> list[dict]:
    """Shape (a) of ../shared/bench (fidelity and speed against the official figures) and the greedy scale series."""
    shape_a = dict(n_train=5000 if args.quick else 20000, n_valid=2000, dim=384)
    data_a = _inputs(**shape_a, check=not args.quick)
    common = dict(data=str(data_a), budget=500, lam=0.1, cut_num=30, max_iters=50, threads=args.threads)
    configs = [dict(common, name="greedy: lazy vs dense brute force", refine=False, reference=True)]
    configs += [dict(common, name="ITRA official pruning", pruning="official")]
    if not args.quick:
        configs += [dict(common, name="ITRA official, no screening", pruning="official", screen=False,
                         max_iters=args.noscreen_iters)]
    configs += [dict(common, name="ITRA corrected pruning", pruning="corrected"),
                dict(common, name="ITRA corrected, bound order", pruning="corrected", pair_order="bound"),
                dict(common, name="ITRA corrected, sinkhorn", pruning="corrected", solver="sinkhorn")]
    for n_train in ([] if args.quick else [10000, 20000, 40000, 80000, 160000]):
        data = _inputs(n_train=n_train, n_valid=2000, dim=384, check=False)
        configs.append(dict(common, data=str(data), name=f"greedy scale N={n_train}", refine=False))
    return configs


def _target_configs(args) -> list[dict]:
    """Issue 24's targets, each in its own child: shape (a) official (duals=emd: the official trajectory), the
    notebook shape in official mode (duals=warm), ``selection=goracs_ot`` at the notebook shape, and with
    ``--paper`` the Games shape (corrected pruning, pairs by bound, duals=warm, as ``goracs_corrected``)."""
    data_a = _inputs(n_train=20000, n_valid=2000, dim=384, check=True)
    data_nb = _inputs(n_train=15000, n_valid=5000, dim=768, check=False)
    goracs_ot = _composed("goracs_ot")
    t = args.threads
    configs = [
        dict(data=str(data_a), name="target shape (a): official, duals=emd", budget=500, lam=0.1, cut_num=30,
             max_iters=50, pruning="official", duals="emd", threads=t, trace=True),
        dict(data=str(data_nb), name="target notebook: official, duals=warm", budget=1000, lam=0.5, cut_num=30,
             max_iters=10, pruning="official", duals="warm", threads=t),
        dict(goracs_ot, data=str(data_nb), name="target notebook: selection=goracs_ot", budget=1000, lam=0.5,
             cut_num=30, max_iters=10, threads=t),
    ]
    if args.paper:
        configs.append(dict(data=str(_inputs(n_train=140000, n_valid=5000, dim=768, check=False)),
                            name="target paper (Games): goracs_corrected", budget=1024, lam=0.1, cut_num=30,
                            max_iters=100, threads=t, **_composed("goracs_corrected")))
    return configs


def _composed(name: str) -> dict:
    """The refinement keys of ``conf/selection/<name>.yaml`` as Hydra composes it (so the bench runs that config)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[f"selection={name}"]).selection
    keys = ("pruning", "pair_order", "duals", "greedy_fill", "screen", "solver", "refine")
    return {k: cfg[k] for k in keys if k in cfg}


def _target_summary(rows: list[dict]) -> str:
    """The ratios against the recorded official figures and the two time limits, each with its target."""
    out = ["targets (official figures are the recorded ones, not re-measured in this run):"]
    by = {r["name"]: r for r in rows}

    def line(name, text):
        r = by.get(name)
        if r is None or "error" in r:
            out.append(f"  {name}: not measured ({r.get('error') if r else 'not run'})")
        else:
            out.append(f"  {name}: {text(r)}")

    a, nb = OFFICIAL["shape (a)"], OFFICIAL["notebook"]
    line("target shape (a): official, duals=emd", lambda r: (
        f"{a['time_s'] / r['time_s']:.0f}x wall ({a['time_s'] / r['cpu_s']:.0f}x by CPU s) vs official {a['time_s']:.0f} s "
        f"[target >= {TARGETS['shape (a)']:.0f}x: {'met' if a['time_s'] / r['time_s'] >= TARGETS['shape (a)'] else 'NOT met'}]; "
        f"POO {r['poo_final']:.6f} (official {a['poo_final']:.6f}), accepted {r['exchanges_accepted']} "
        f"(official {a['accepted']}), tried+screened {r['exchanges_tried'] + r['exchanges_screened']} "
        f"(official EMDs {a['emds']})"))
    line("target notebook: official, duals=warm", lambda r: (
        f"{nb['time_s'] / r['time_s']:.0f}x wall ({nb['time_s'] / r['cpu_s']:.0f}x by CPU s) vs official "
        f"{nb['time_s']:.0f} s [target >= {TARGETS['notebook']:.0f}x: "
        f"{'met' if nb['time_s'] / r['time_s'] >= TARGETS['notebook'] else 'NOT met'}]; POO {r['poo_final']:.4f} "
        f"(official {nb['poo_final']}: {'<=' if r['poo_final'] <= nb['poo_final'] else '>'})"))
    line("target notebook: selection=goracs_ot", lambda r: (
        f"{r['time_s']:.1f} s wall, {r['cpu_s']:.1f} CPU s, {r['exchanges_accepted']} exchanges, POO {r['poo_final']:.4f} "
        f"[target <= {TARGETS['goracs_ot_s']:.0f} s: {'met' if r['time_s'] <= TARGETS['goracs_ot_s'] else 'NOT met'}]"))
    line("target paper (Games): goracs_corrected", lambda r: (
        f"{r['time_s']:.1f} s wall, {r['cpu_s']:.1f} CPU s, {r['exchanges_accepted']} exchanges, peak RSS "
        f"{r['peak_rss_gib']:.2f} GiB [target <= {TARGETS['paper_s']:.0f} s: "
        f"{'met' if r['time_s'] <= TARGETS['paper_s'] else 'NOT met'}]"))
    return "\n".join(out)


def _fill_configs(args) -> list[dict]:
    """``greedy_fill=index`` vs ``ot`` with both pruning modes (docs/bench_goracs.md, "Greedy fill").

    Shapes: (a), where the greedy never saturates (nothing may change); the 15k x 5k x 768 shape of the official
    notebook (lambda 0.5, n 1000; 10 and 100 exchanges); optionally the paper's Games shape (``--paper``) and a real
    pool (``--real DIR`` holding train_emb.npy, valid_emb.npy, grad_norm.npy and budget.txt).
    """
    shapes = [(dict(n_train=15000, n_valid=5000, dim=768), dict(budget=1000, lam=0.5), [10, 100], "15k x 5k")]
    configs = []
    if args.real:
        real = Path(args.real)
        opts = dict(data=str(real), budget=int((real / "budget.txt").read_text()), lam=0.1, cut_num=30,
                    threads=args.threads)
        configs += _fill_grid(opts, [10, 100], f"real {real.name}")
    shapes.append((dict(n_train=20000, n_valid=2000, dim=384), dict(budget=500, lam=0.1), [50], "shape (a)"))
    if args.paper:
        shapes.append((dict(n_train=140000, n_valid=5000, dim=768), dict(budget=1024, lam=0.1), [100], "paper"))
    for shape, opts, iters, label in shapes:
        data = str(_inputs(**shape, check=False))
        configs += _fill_grid(dict(opts, data=data, threads=args.threads, cut_num=30), iters, label)
    return configs


def _fill_grid(common: dict, iters: list[int], label: str) -> list[dict]:
    grid = []
    for max_iters in iters:
        for pruning, order in (("official", "product"), ("corrected", "bound")):
            for fill in ("index", "ot"):
                grid.append(dict(common, name=f"{label}, {pruning}, {max_iters} ex., fill={fill}", pruning=pruning,
                                 pair_order=order, greedy_fill=fill, max_iters=max_iters))
    return grid


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=5000 shape-(a) subset, no scale series")
    p.add_argument("--paper", action="store_true", help="add the paper's Games shape (slow, ~4 GiB)")
    p.add_argument("--paper-only", action="store_true", help="only the paper's Games shape")
    p.add_argument("--paper-pruning", default="corrected", choices=["official", "corrected"])
    p.add_argument("--fill", action="store_true", help="greedy_fill=index vs ot study (see _fill_configs)")
    p.add_argument("--targets", action="store_true", help="issue 24's targets and their ratios (add --paper for Games)")
    p.add_argument("--real", help="with --fill: folder with a real pool's train_emb/valid_emb/grad_norm .npy + budget.txt")
    p.add_argument("--noscreen-iters", type=int, default=3, help="accepted swaps for the no-screening timing row")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0 = torch default); 1 avoids OpenMP spin-waits on a busy machine")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    p.add_argument("--only", action="append", help="run only configurations whose name contains this (repeatable)")
    p.add_argument("--resume", action="store_true", help="reuse the rows already in --out (same names, no error)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "bench_goracs.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON) in this process
    return p.parse_args()


def _inputs(n_train: int, n_valid: int, dim: int, check: bool) -> Path:
    out = ROOT / "outputs" / "bench" / f"n{n_train}_m{n_valid}_d{dim}"
    if not (out / "meta.json").exists():
        log.info("generating %s", out)
        subprocess.run([sys.executable, str(MAKE), "--out", str(out), "--n-train", str(n_train), "--n-valid",
                        str(n_valid), "--dim", str(dim), "--seed", "0"], check=True)
    if check:
        meta = json.loads((out / "meta.json").read_text())["sha256"]
        for name, prefix in PINNED.items():
            digest = hashlib.sha256(np.ascontiguousarray(np.load(out / f"{name}.npy")).tobytes()).hexdigest()
            if digest != meta[name] or not digest.startswith(prefix):
                raise SystemExit(f"{out}/{name}.npy: array sha256 {digest[:16]}... != pinned {prefix}... (README)")
        log.info("inputs %s: sha256 match the pinned values", out.name)
    return out


def _child(cfg: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(name=cfg["name"], error=f"timeout after {timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return dict(name=cfg["name"], error=proc.stderr.strip().splitlines()[-1] if proc.stderr else "no result")
    return json.loads(lines[-1][len("RESULT "):])


def _run_one(cfg: dict) -> dict:
    import ot
    import torch

    from goracs.selection import ArrayFeatures, Pool
    from goracs.selection.goracs import GoracsSelector
    from goracs.selection.goracs.cost import build_cost
    from goracs.selection.goracs.greedy import greedy_init

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    data = Path(cfg["data"])
    x, y, g = (np.load(data / f"{k}.npy") for k in ("train_emb", "valid_emb", "grad_norm"))
    row = dict(name=cfg["name"], N=len(x), M=len(y), d=x.shape[1], n=cfg["budget"], threads=torch.get_num_threads(),
               pot=ot.__version__)
    if cfg.get("reference"):
        gh = torch.from_numpy(g / g.max())
        cost = build_cost(torch.from_numpy(x), torch.from_numpy(y), gh, cfg["lam"], normalize_dist=True,
                          chunk_size=4096).values
        t0 = time.process_time()
        lazy = greedy_init(cost, cfg["budget"], chunk_size=4096)
        row["lazy_greedy_s"] = time.process_time() - t0  # CPU seconds, see cpu_s
        t0 = time.process_time()
        dense = _dense_greedy(cost, cfg["budget"])
        row["dense_greedy_s"] = time.process_time() - t0
        row["identical_picks"] = lazy == dense
        row["speedup"] = row["dense_greedy_s"] / row["lazy_greedy_s"]
        del cost
    keys = ("lam", "max_iters", "cut_num", "pruning", "screen", "pair_order", "solver", "refine", "greedy_fill", "duals")
    sel = GoracsSelector(**{k: cfg[k] for k in keys if k in cfg})
    pool = Pool(size=len(x), features=ArrayFeatures(train={"text_emb": x, "grad_norm": g}, valid={"text_emb": y}))
    cpu0 = time.process_time()
    res = sel.select(pool, cfg["budget"], seed=0)
    row["cpu_s"] = time.process_time() - cpu0  # CPU seconds: steadier than wall time on a shared machine
    row.update({k: res.stats.get(k) for k in ("time_s", "time_greedy_s", "time_refine_s", "poo_greedy", "poo_final",
                                                "greedy_saturated_at", "time_fill_s",
                                                "exchanges_accepted", "exchanges_tried", "exchanges_screened",
                                                "time_prune_s", "time_solve_s", "exchanges_abandoned",
                                                "fresh_emds", "time_fresh_emd_s")})
    if cfg.get("trace"):
        row["poo_trace"] = [round(v, 9) for v in res.traces["poo_trace"]]
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def _dense_greedy(cost, budget: int) -> list[int]:
    """Brute force as the official code: dense gain ``Σ_j C_ej - Σ_j |m_j - C_ej|`` on all rows."""
    import torch

    n_rows, n_cols = cost.shape
    sums = cost.sum(dim=1, dtype=torch.float64)
    sel = [int(sums.argmin())]
    flag = len(torch.unique(cost.argmin(dim=0))) > budget
    in_s = torch.zeros(n_rows, dtype=torch.bool)
    in_s[sel[0]] = True
    col_min = cost[sel[0]].clone()
    while True:
        if len(sel) >= budget:
            owners = torch.as_tensor(sel)[cost[sel].argmin(dim=0)]
            have = set(owners.tolist())
            if sum(k in have for k in sel) >= budget or not flag:
                return [k for k in sel if k in have] if flag else sel
        gain = sums - (col_min - cost).abs().sum(dim=1, dtype=torch.float64)
        gain[in_s] = float("inf")
        e = int(gain.argmin())
        sel.append(e)
        in_s[e] = True
        col_min = torch.minimum(col_min, cost[e])


def _table(rows: list[dict]) -> str:
    from tabulate import tabulate

    cols = ["name", "N", "M", "n", "time_s", "cpu_s", "time_greedy_s", "time_refine_s", "time_prune_s", "time_solve_s",
            "greedy_saturated_at", "time_fill_s", "poo_greedy", "poo_final",
            "exchanges_accepted", "exchanges_tried", "exchanges_screened", "peak_rss_gib", "lazy_greedy_s",
            "dense_greedy_s", "speedup", "identical_picks", "error"]
    used = [c for c in cols if any(c in r and r[c] is not None for r in rows)]
    body = [[r.get(c, "") for c in used] for r in rows]
    return tabulate(body, headers=used, tablefmt="github", floatfmt=".6g")


if __name__ == "__main__":
    main()
