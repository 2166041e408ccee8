"""Resumable fine-tuning: a fit killed with SIGKILL and resumed in a fresh process ends exactly as an uninterrupted one
(adapter, best val/loss, epochs, steps, val/loss history), whether it resumes from an epoch-end checkpoint or from
step checkpoints mid-epoch; a finished fit resumes to its end at once; a checkpoint of another fit is refused.

The tiny Llama keeps LoRA dropout on (p=0.1): an exact match needs the restored RNG state, as well as the restored
data order (shuffling generator, batches already run) and optimiser/scheduler state.

Run as a script (``python tests/test_resume.py OUT HOOK STEP EVERY``), this file is the child that fine-tunes into
``OUT`` and kills itself with SIGKILL when training reaches ``HOOK`` (``batch``: the start of a training batch,
``validation``: the start of a validation check) with ``STEP`` optimiser steps done.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from peft import LoraConfig

from test_finetune import lora_state, make_samples, trainer_conf
from conftest import CTR, SEQREC, task_named
from goracs.errors import ConfigError
from goracs.models.backbone import TinyLlamaBackbone
from goracs.models.finetune import LAST_CKPT, fine_tune
from goracs.models.lora import attach_lora
from goracs.models.module import LoraRecModule

HERE = Path(__file__).resolve().parent
# 24 samples / batch 8: 3 optimiser steps per epoch, 3 epochs, validation at each epoch end -> 9 steps, 3 checks.
N_TRAIN, MAX_EPOCHS, STEPS_PER_EPOCH = 24, 3, 3


def samples(task: str = "seqrec"):
    return make_samples(N_TRAIN, task, 0), make_samples(6, task, 1)


def dropout_model(frames, task: str = "seqrec", r: int = 4, targets=("q_proj", "v_proj")):
    texts = [task_named(task).prompt(row) + row["output"] for f in frames for row in f.to_dict("records")]
    model, tok = TinyLlamaBackbone(seed=0).load(texts)
    lora = LoraConfig(r=r, lora_alpha=8, lora_dropout=0.1, target_modules=list(targets), task_type="CAUSAL_LM")
    return attach_lora(model, lora, seed=0), tok


def run_fit(out_dir: Path, callbacks=(), task: str = "seqrec", **kwargs):
    """The fit every test (and the child) runs: a fresh model each time, as a new process would build it."""
    train, valid = samples(task)
    model, tok = dropout_model([train, valid], task)
    result = fine_tune(model, tok, train, valid, task=task_named(task), faithful=True,
                       trainer=trainer_conf(lr=1e-2, patience=5, lightning={"max_epochs": MAX_EPOCHS}),
                       out_dir=out_dir, seed=0, callbacks=list(callbacks), **kwargs)
    return result, lora_state(model)


class KillAt(Callback):
    """SIGKILL this process at the start of a training batch / validation check once ``step`` steps are done."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step

    def _maybe_kill(self, trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "batch")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._maybe_kill(trainer, "validation")


class CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def killed_child(out_dir: Path, hook: str, step: int, every: int = 0) -> str:
    """Run the fit in a child process that SIGKILLs itself at (hook, step); its log (stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out_dir), hook, str(step), str(every)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stderr


def saved_at(out_dir: Path) -> tuple[int, int]:
    """(global step, epochs processed) recorded in out_dir's last.ckpt."""
    saved = torch.load(out_dir / "checkpoints" / LAST_CKPT, map_location="cpu", weights_only=True)
    return int(saved["global_step"]), int(saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def assert_same_fit(result, state, ref_result, ref_state) -> None:
    assert result.epochs == ref_result.epochs == MAX_EPOCHS
    assert result.steps == ref_result.steps == MAX_EPOCHS * STEPS_PER_EPOCH
    assert result.val_history == pytest.approx(ref_result.val_history, abs=1e-6, rel=0)
    assert len(result.val_history) == MAX_EPOCHS
    assert result.best_val_loss == pytest.approx(ref_result.best_val_loss, abs=1e-6, rel=0)
    assert set(state) == set(ref_state)
    for name in ref_state:
        torch.testing.assert_close(state[name], ref_state[name], atol=1e-6, rtol=0, msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted fit, in this process."""
    out = tmp_path_factory.mktemp("reference")
    result, state = run_fit(out)
    assert result.resumed_from is None and (out / "checkpoints" / LAST_CKPT).exists()
    return out, result, state


def test_sigkilled_fit_resumes_from_the_epoch_end_checkpoint(tmp_path, reference, caplog):
    _, ref_result, ref_state = reference
    # Killed as the 5th batch starts (epoch 1): the last checkpoint is the end of epoch 0 (step 3); step 4 is lost.
    killed_child(tmp_path, "batch", 4)
    assert saved_at(tmp_path) == (3, 1)
    last = tmp_path / "checkpoints" / LAST_CKPT
    counter = CountBatches()
    with caplog.at_level(logging.INFO, logger="goracs.models.finetune"):
        result, state = run_fit(tmp_path, callbacks=[counter])
    assert f"resuming fine-tuning from {last} (epoch 0, step 3)" in caplog.text
    assert result.resumed_from == last
    assert counter.batches == 6                             # epochs 1 and 2 only
    assert_same_fit(result, state, ref_result, ref_state)


def test_sigkilled_fit_resumes_from_step_checkpoints_mid_epoch(tmp_path, reference):
    _, ref_result, ref_state = reference
    # save_every_n_steps=2. First kill as the 6th batch starts: last.ckpt is step 4, one batch into epoch 1.
    killed_child(tmp_path, "batch", 5, every=2)
    assert saved_at(tmp_path) == (4, 1)
    # The second child resumes mid-epoch, goes through epoch 1's end and validation, and is killed as the 9th batch
    # starts: last.ckpt is step 8, two batches into epoch 2.
    log = killed_child(tmp_path, "batch", 8, every=2)
    assert f"resuming fine-tuning from {tmp_path / 'checkpoints' / LAST_CKPT} (epoch 1, step 4)" in log
    assert saved_at(tmp_path) == (8, 2)
    counter = CountBatches()
    result, state = run_fit(tmp_path, callbacks=[counter], save_every_n_steps=2)
    assert result.resumed_from == tmp_path / "checkpoints" / LAST_CKPT
    assert counter.batches == 1                             # the last batch of epoch 2 only
    assert_same_fit(result, state, ref_result, ref_state)


def test_no_step_checkpoint_just_before_a_validation(tmp_path):
    # Lightning resumes a checkpoint written after a batch that a validation check follows past that check: the
    # val/loss would be lost. So the step checkpoint of an epoch's last batch waits for the epoch-end one.
    seen = []

    class Probe(Callback):
        def on_validation_start(self, trainer, pl_module) -> None:
            seen.append(saved_at(tmp_path))

    result, _ = run_fit(tmp_path, callbacks=[Probe()], save_every_n_steps=1)
    assert seen == [(2, 0), (5, 1), (8, 2)]                 # steps 3, 6, 9 end epochs: no step checkpoint there
    assert saved_at(tmp_path) == (9, 3) and result.steps == 9


def test_finished_fit_resumes_to_its_end_and_resume_false_starts_afresh(reference):
    out, ref_result, ref_state = reference
    counter = CountBatches()
    result, state = run_fit(out, callbacks=[counter])       # the reference's folder: its fit is over
    assert result.resumed_from is not None and counter.batches == 0
    assert_same_fit(result, state, ref_result, ref_state)
    counter = CountBatches()
    result, state = run_fit(out, callbacks=[counter], resume=False)
    assert result.resumed_from is None and counter.batches == MAX_EPOCHS * STEPS_PER_EPOCH
    assert_same_fit(result, state, ref_result, ref_state)


def test_early_stopped_fit_stays_stopped_on_resume(tmp_path):
    # As test_finetune's early-stopping test: CTR over-fits, patience 1 stops the fit before max_epochs.
    train, valid = make_samples(16, "ctr", 0), make_samples(8, "ctr", 1)
    results = []
    for _ in range(2):
        model, tok = dropout_model([train, valid], "ctr")
        counter = CountBatches()
        result = fine_tune(model, tok, train, valid, task=CTR, faithful=True, callbacks=[counter],
                           trainer=trainer_conf(lr=1e-2, patience=1, lightning={"max_epochs": 6}), out_dir=tmp_path,
                           seed=0)
        results.append((result, counter.batches))
    (first, trained), (again, retrained) = results
    assert first.epochs < 6 and trained == first.steps and retrained == 0
    assert (again.epochs, again.steps, again.val_history, again.best_val_loss) == (
        first.epochs, first.steps, first.val_history, first.best_val_loss)


def test_checkpoint_of_another_fit_is_refused(tmp_path):
    train, valid = samples()
    model, tok = dropout_model([train, valid])
    conf = trainer_conf(lr=1e-2, lightning={"max_epochs": 1})
    fine_tune(model, tok, train, valid, task=SEQREC, faithful=True, trainer=conf, out_dir=tmp_path, seed=0)
    last = tmp_path / "checkpoints" / LAST_CKPT
    advice = "delete it or use a new output folder"
    # Another adapter on the same model: LoRA tensors of another rank, or on other modules.
    for r, targets in ((8, ("q_proj", "v_proj")), (4, ("q_proj", "k_proj", "v_proj"))):
        other, tok = dropout_model([train, valid], r=r, targets=targets)
        with pytest.raises(ConfigError, match="different model or adapter") as err:
            fine_tune(other, tok, train, valid, task=SEQREC, faithful=True, trainer=conf, out_dir=tmp_path, seed=0)
        assert str(last) in str(err.value) and advice in str(err.value)
    # Another task (same LoRA tensors), other samples, another trainer setting.
    ctr_train, ctr_valid = samples("ctr")
    other, ctr_tok = dropout_model([ctr_train, ctr_valid], "ctr")
    with pytest.raises(ConfigError, match=r"task: seqrec then, ctr now") as err:
        fine_tune(other, ctr_tok, ctr_train, ctr_valid, task=CTR, faithful=True, trainer=conf, out_dir=tmp_path,
                  seed=0)
    assert str(last) in str(err.value) and advice in str(err.value)
    with pytest.raises(ConfigError, match=r"train: 24 samples.* then, 23 samples"):
        fine_tune(model, tok, train.iloc[1:], valid, task=SEQREC, faithful=True, trainer=conf, out_dir=tmp_path,
                  seed=0)
    with pytest.raises(ConfigError, match=r"trainer.lr: 0.01 then, 0.001 now"):
        fine_tune(model, tok, train, valid, task=SEQREC, faithful=True, trainer={**conf, "lr": 1e-3},
                  out_dir=tmp_path, seed=0)
    # Lightning's own restore path (ckpt_path given to trainer.fit) runs the same adapter check.
    module = LoraRecModule(dropout_model([train, valid], r=8)[0], task=SEQREC, lr=1e-3)
    saved = torch.load(last, map_location="cpu", weights_only=True)
    with pytest.raises(ConfigError, match=f"{advice}"):
        module.on_load_checkpoint(saved)
    # A truncated file (the write is atomic, but a disk can fill up) is refused too, not silently restarted.
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot be read"):
        fine_tune(model, tok, train, valid, task=SEQREC, faithful=True, trainer=conf, out_dir=tmp_path, seed=0)


@pytest.mark.slow
def test_ddp_fit_sigkilled_mid_epoch_resumes_exactly(tmp_path):
    # 2 CPU processes (ddp_spawn): the DistributedSampler shuffles by epoch, the skip is per rank. No LoRA dropout:
    # after a resume every rank draws from rank 0's RNG state (see goracs.models.finetune).
    from test_finetune import tiny_model

    def fit(out: Path, callbacks=()):
        train, valid = samples()
        model, tok = tiny_model([train, valid], "seqrec")
        result = fine_tune(model, tok, train, valid, task=SEQREC, faithful=True, callbacks=list(callbacks),
                           trainer=trainer_conf("ddp", lr=1e-2, lightning={"max_epochs": MAX_EPOCHS}), out_dir=out,
                           seed=0, save_every_n_steps=1)
        return result, lora_state(model)

    ref_result, ref_state = fit(tmp_path / "reference")
    # 24 samples / (batch 4 x 2 processes): 3 steps per epoch; each worker SIGKILLs itself as the 6th batch starts.
    with pytest.raises(Exception, match="SIGKILL|signal 9"):
        fit(tmp_path / "killed", [KillAt("batch", 5)])
    assert saved_at(tmp_path / "killed") == (5, 1)
    result, state = fit(tmp_path / "killed")
    assert result.resumed_from is not None
    assert_same_fit(result, state, ref_result, ref_state)


def test_resumable_checkpoint_holds_the_adapter_not_the_base(reference):
    out, _, ref_state = reference
    saved = torch.load(out / "checkpoints" / LAST_CKPT, map_location="cpu", weights_only=True)
    assert {k.removeprefix("model.") for k in saved["state_dict"]} == set(ref_state)
    assert saved["optimizer_states"] and saved["lr_schedulers"] and saved["loops"] and saved["callbacks"]
    adapter_bytes = sum(t.numel() * t.element_size() for t in ref_state.values())
    assert (out / "checkpoints" / LAST_CKPT).stat().st_size < 4 * adapter_bytes + 100_000


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    out_dir, hook, step, every = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    run_fit(out_dir, callbacks=[KillAt(hook, step)], save_every_n_steps=every)
    sys.exit(3)  # reaching the end means the kill never happened: the test fails on this status
