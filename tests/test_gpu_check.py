"""experiments/gpu_check.sh: valid bash, and its dry run lists every step within the 10-minute budget."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gpu_check.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_dry_run_lists_every_step_and_stays_within_10_minutes():
    done = subprocess.run([str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True, timeout=30)
    out = done.stdout
    for step, needs in (("gpu_tests", "-m gpu"), ("seqrec_gpu", "features=gpu trainer=gpu eval=gpu"),
                        ("fsdp_1gpu", "trainer=fsdp trainer.lightning.devices=1"),
                        ("bench_features", "--device cuda"), ("bench_pipeline", "--device cuda")):
        line = next(line for line in out.splitlines() if line.startswith(step))
        assert needs in line
    assert "model=smollm2" in out and "task=seqrec" in out
    total = int(re.search(r"total time limit: (\d+) s", out).group(1))
    assert total <= 600


def test_an_unknown_argument_is_refused():
    done = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
