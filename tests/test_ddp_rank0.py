"""One job per job under a launcher that re-executes goracs-run per rank (Lightning ``strategy=ddp``): rank 0 runs
data, features, selection, export, evaluation and ``metrics.json`` once; rank 1 joins only the fit and writes
nothing; the adapter equals a single-process fit of the same samples.

Why the adapters must agree: the coreset (4 samples) is one optimiser step in both runs: 2 ranks x 2 samples under
DDP, 1 process x 4 samples alone. The training loss is the mean of per-sample losses, and DDP averages the ranks'
gradients, so both steps take the gradient of the same mean over the same 4 samples, from the same φ₀ (tiny_llama
seed 0, lora_seed 0), with LoRA dropout off. ``cutoff_len=32`` cuts every sample (each longer than 32 tokens) to
32 tokens, so no batch is padded: left padding shifts the positions of a shorter sample's tokens, which would make a
sample's loss depend on its batch-mates. What remains is float summation order (tolerance 1e-6). Warmup 0, so the
one step has the full learning rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
JOB = ["model=tiny_llama", "data.max_train=16", "data.max_valid=4", "data.max_test=4", "selection=random", "budget=4",
       "logger=none", "cutoff_len=32", "model.lora.lora_dropout=0.0", "trainer.warmup_steps=0",
       "trainer.lightning.max_epochs=1", "trainer.lightning.enable_progress_bar=false", "eval.ranking=none"]


def _goracs(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, str]:
    run_dir = tmp_path / name
    cmd = [str(Path(sys.executable).parent / "goracs-run"), *JOB, *overrides, f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return run_dir, out


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_rank_0_owns_the_job_and_rank_1_joins_only_the_fit(tmp_path):
    ddp_dir, _ = _goracs(tmp_path, "ddp", "trainer=ddp", "trainer.lightning.strategy=ddp", "trainer.batch_size=2")
    rank0 = (ddp_dir / "goracs.log").read_text()
    rank1 = (ddp_dir / "train_ddp_process_1.log").read_text()
    # Every stage once, in rank 0; rank 1 only reads the samples' cache and the hand-off, then fits.
    assert rank0.count("samples for ml100k/seqrec built") == 1
    assert rank0.count("selected 4 of 16 samples with random") == 1
    assert rank0.count("saved LoRA adapter") == 1 and rank0.count("evaluated 4 seqrec test samples") == 1
    assert "joining rank 0's fit" in rank1 and "fine-tuning on 4 samples" in rank1
    for stage in ("built in", "selected", "wrote", "saved LoRA adapter", "evaluated", "metrics.json"):
        assert stage not in rank1, f"rank 1 ran {stage!r}"
    metrics = json.loads((ddp_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["train/steps"] == 1 and metrics["n_selected"] == 4
    assert json.loads((ddp_dir / "ranks" / "selection.json").read_text())["indices"] == \
        json.loads((ddp_dir / "selected_indices.json").read_text())["indices"]

    single_dir, _ = _goracs(tmp_path, "single", "trainer=cpu", "trainer.batch_size=4")
    ddp, single = _adapter(ddp_dir), _adapter(single_dir)
    assert ddp.keys() == single.keys()
    moved = [k for k in ddp if "lora_B" in k]
    assert moved and all(single[k].abs().max() > 0 for k in moved)  # the step did move the adapter
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the re-executed FSDP fit needs 2 CUDA devices")
def test_fsdp_rank_0_owns_the_job_on_cuda(tmp_path):
    run_dir, _ = _goracs(tmp_path, "fsdp", "trainer=fsdp", "trainer.lightning.devices=2", "trainer.batch_size=2",
                         "trainer.lightning.accumulate_grad_batches=1", "trainer.lightning.precision=32-true")
    rank0 = (run_dir / "goracs.log").read_text()
    rank1 = (run_dir / "train_ddp_process_1.log").read_text()
    assert rank0.count("selected 4 of 16 samples with random") == 1 and rank0.count("saved LoRA adapter") == 1
    assert "joining rank 0's fit" in rank1 and "saved LoRA adapter" not in rank1 and "evaluated" not in rank1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_on_one_gpu_runs_the_job_end_to_end(tmp_path):
    run_dir, _ = _goracs(tmp_path, "fsdp1", "trainer=fsdp", "trainer.lightning.devices=1",
                         "trainer.lightning.accumulate_grad_batches=1", "trainer.batch_size=4")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
