"""experiments/collect_results.py: a sweep's records copied as data, compressed, with a manifest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from goracs.evaluation.records import FILENAME, read_records
from test_report_intervals import write_job

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("collect_results", ROOT / "experiments" / "collect_results.py")
collect_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collect_results)


def hydra_sweep(root: Path) -> Path:
    """Two jobs laid out as goracs-run -m writes them, plus files that must not be copied."""
    for seed in (0, 1):
        job = write_job(root, "seqrec", "random", 64, seed, name=f"budget=16,seed={seed},selection=random")
        (job / "adapter").mkdir()
        (job / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 100)
        (job / "wandb").mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "optimization_results.yaml").write_text("best_value: 1.0\n")  # an Optuna search's result
    return root


def test_collect_copies_records_compressed_and_writes_a_manifest(tmp_path, capsys):
    sweep = hydra_sweep(tmp_path / "sweep")
    dest = tmp_path / "results" / "study"
    argv = [str(sweep), str(dest), "--command", "goracs-run -m experiment=x", "--command", "goracs-report y"]
    assert collect_results.main(argv) == 0
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["budget=16,seed=0,selection=random/metrics.json", f"budget=16,seed=0,selection=random/{FILENAME}",
                      "budget=16,seed=1,selection=random/metrics.json", f"budget=16,seed=1,selection=random/{FILENAME}",
                      "manifest.json", "multirun.yaml", "optimization_results.yaml"]
    for seed in (0, 1):
        job = f"budget=16,seed={seed},selection=random"
        assert (dest / job / "metrics.json").read_bytes() == (sweep / job / "metrics.json").read_bytes()
        pd.testing.assert_frame_equal(read_records(dest / job / FILENAME), read_records(sweep / job / FILENAME))
        assert pq.ParquetFile(dest / job / FILENAME).metadata.row_group(0).column(0).compression == "ZSTD"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["commands"] == ["goracs-run -m experiment=x", "goracs-report y"]
    assert manifest["jobs"] == 2 and manifest["status"] == {"ok": 2} and len(manifest["git"]["sha"]) == 40
    assert {"cpu", "torch_cpu_capability", "cores", "ram_gib", "os", "python"} <= set(manifest["machine"])
    assert manifest["machine"]["cores"] >= 1 and len(manifest["files"]) == 6
    assert "collected 2 jobs" in capsys.readouterr().out


def test_collect_refuses_bad_input_with_one_line(tmp_path, capsys):
    sweep = hydra_sweep(tmp_path / "sweep")
    assert collect_results.main([str(tmp_path / "nope"), str(tmp_path / "d"), "--command", "c"]) == 2
    assert collect_results.main([str(sweep), str(tmp_path / "d")]) == 2  # no --command
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert collect_results.main([str(sweep), str(tmp_path / "full"), "--command", "c"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [e.split(":")[0] for e in err] == ["collect_results"] * 3
    assert "is not a folder" in err[0] and "--command" in err[1] and "--force" in err[2]
