"""LoRA fine-tuning with Lightning on a tiny Llama: both tasks, loss decrease, best-checkpoint restore, adapter-only
checkpoints, trainer configs, and a 2-process DDP fit on CPU."""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path

from adapter_steps import adapter_losses
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from peft import LoraConfig

from conftest import CTR, SEQREC, task_named
from goracs.models.backbone import TinyLlamaBackbone
from goracs.models.datamodule import RecDataModule
from goracs.models.encoding import IGNORE, answer_token_ids
from goracs.models.finetune import TrainerConfig, fine_tune
from goracs.models.lora import attach_lora
from goracs.models.module import LoraRecModule

CONF = Path(__file__).parents[1] / "conf" / "trainer"
TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)",
          "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)",
          "Seven (Se7en) (1995)",
          "Heat (1995)", "Sabrina (1995)"]


def make_samples(n: int, task: str, seed: int) -> pd.DataFrame:
    """``n`` samples with the data stage's schema; the target is the title after the last history item."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        hist = rng.choice(len(TITLES), 3, replace=False)
        target = int((hist[-1] + 1) % len(TITLES))
        label = int(target % 2)
        rows.append({
            "user": f"u{i}", "item": str(target), "rating": 4.0 if label else 2.0, "timestamp": i,
            "history": [str(h) for h in hist], "history_ratings": [4.0] * 3, "label": label,
            "instruction": "Given a list of movies the user has watched before, recommend a new movie.",
            "input": "The user has watched:" + ", ".join(f'"{TITLES[h]}"' for h in hist) + "\n ",
            "output": f'"{TITLES[target]}"' if task == "seqrec" else ("Yes" if label else "No"),
            "negatives": [], "targets": [str(target)]})
    return pd.DataFrame(rows)


def tiny_model(frames: list[pd.DataFrame], task: str):
    texts = [task_named(task).prompt(r) + r["output"] for f in frames for r in f.to_dict("records")]
    model, tok = TinyLlamaBackbone(seed=0).load(texts)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(0)  # LoRA A is drawn from torch's global generator: seed it, as the run does before attaching
    return attach_lora(model, lora), tok


@lru_cache(maxsize=None)
def _composed_trainer(name: str) -> str:
    """The resolved ``trainer`` node of ``trainer=<name>`` (its cutoff_len interpolates the top-level one), as yaml."""
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        return OmegaConf.to_yaml(compose("config", overrides=[f"trainer={name}"]).trainer, resolve=True)


def trainer_conf(name: str = "cpu", **overrides) -> dict:
    conf = OmegaConf.to_container(OmegaConf.create(_composed_trainer(name)))
    conf["lightning"].update({"enable_progress_bar": False, "logger": False})
    lightning = overrides.pop("lightning", {})
    conf["lightning"].update(lightning)
    conf.update(overrides)
    return conf


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def mean_val_loss(model, tok, valid: pd.DataFrame, task: str) -> float:
    data = RecDataModule(tok, valid.iloc[:1], valid, task=task_named(task), eval_batch_size=4)
    data.setup()
    module = LoraRecModule(model, task=task_named(task), lr=1e-3,
                           answer_ids=answer_token_ids(tok) if task == "ctr" else None)
    model.eval()
    with torch.no_grad():
        losses = torch.cat([module.per_sample_loss(b) for b in data.val_dataloader()])
    return float(losses.mean())


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_short_fit_keeps_only_lora_weights_in_checkpoint(task, tmp_path):
    train, valid = make_samples(12, task, 0), make_samples(6, task, 1)
    model, tok = tiny_model([train, valid], task)
    before = lora_state(model)
    result = fine_tune(model, tok, train, valid, task=task_named(task), faithful=True,
                       trainer=trainer_conf(lr=1e-2, lightning={"max_epochs": 2}), out_dir=tmp_path, seed=0)
    assert result.epochs == 2 and result.steps == 4   # 12 samples / batch 8 -> 2 steps per epoch
    assert len(result.val_history) == 2 and math.isfinite(result.best_val_loss)
    assert result.best_val_loss == pytest.approx(min(result.val_history))
    saved = torch.load(result.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    after = lora_state(model)
    assert {k.removeprefix("model.") for k in saved} == set(after)  # exactly the LoRA tensors, no base weights
    assert all("lora_" in k for k in saved)
    assert result.ckpt.stat().st_size < 200_000
    assert any(not torch.equal(before[k], after[k]) for k in after)  # training moved the adapter


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_loss_decreases_on_a_repeated_batch(task):
    train = make_samples(8, task, 0)
    model, tok = tiny_model([train], task)
    data = RecDataModule(tok, train, None, task=task_named(task), batch_size=8)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    module = LoraRecModule(model, task=task_named(task), lr=1e-2,
                           answer_ids=answer_token_ids(tok) if task == "ctr" else None)
    losses = adapter_losses(module, model, batch, lr=5e-2, steps=10)
    # A random-init model learns slowly through a rank-4 q/v adapter: ask for a clear decrease of the smoothed loss.
    # (Same batch, no dropout: nothing but the updates changes the loss.)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05 and losses[-1] < losses[0], losses


def test_best_checkpoint_is_restored_not_the_last_epoch(tmp_path):
    # CTR with a large learning rate on disjoint train/valid users over-fits: val/loss is best after the first
    # epoch and rises afterwards (deterministic on CPU with these seeds).
    train, valid = make_samples(16, "ctr", 0), make_samples(8, "ctr", 1)
    model, tok = tiny_model([train, valid], "ctr")
    result = fine_tune(model, tok, train, valid, task=CTR, faithful=True,
                       trainer=trainer_conf(lr=1e-2, patience=5, lightning={"max_epochs": 3}), out_dir=tmp_path,
                       seed=0)
    history = result.val_history
    assert len(history) == 3 and int(np.argmin(history)) < 2, f"setup no longer over-fits: {history}"
    restored = mean_val_loss(model, tok, valid, "ctr")
    assert restored == pytest.approx(result.best_val_loss, abs=1e-5)
    assert abs(restored - history[-1]) > 1e-3          # the last epoch's adapter is not the one kept


def test_early_stopping_stops_after_patience(tmp_path):
    train, valid = make_samples(16, "ctr", 0), make_samples(8, "ctr", 1)
    model, tok = tiny_model([train, valid], "ctr")
    result = fine_tune(model, tok, train, valid, task=CTR, faithful=True,
                       trainer=trainer_conf(lr=1e-2, patience=1, lightning={"max_epochs": 6}), out_dir=tmp_path,
                       seed=0)
    best = int(np.argmin(result.val_history))
    assert result.epochs == best + 2 < 6                # one check without improvement, then stop


def test_empty_valid_trains_without_validation(tmp_path):
    train = make_samples(8, "seqrec", 0)
    model, tok = tiny_model([train], "seqrec")
    result = fine_tune(model, tok, train, train.iloc[:0], task=SEQREC, faithful=True,
                       trainer=trainer_conf(lightning={"max_epochs": 2}), out_dir=tmp_path, seed=0)
    assert math.isnan(result.best_val_loss) and result.val_history == []
    assert result.epochs == 2 and result.ckpt is not None and result.ckpt.exists()
    saved = torch.load(result.ckpt, map_location="cpu", weights_only=False)["state_dict"]
    final = lora_state(model)
    assert all(torch.equal(saved[k], final[k.removeprefix("model.")]) for k in saved)


def test_same_seed_same_adapter(tmp_path):
    train, valid = make_samples(12, "seqrec", 0), make_samples(4, "seqrec", 1)
    states = []
    for run in range(2):
        model, tok = tiny_model([train, valid], "seqrec")
        fine_tune(model, tok, train, valid, task=SEQREC, faithful=True,
                  trainer=trainer_conf(lightning={"max_epochs": 1}),
                  out_dir=tmp_path / str(run), seed=3)
        states.append(lora_state(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_train_on_inputs_false_masks_the_prompt():
    train = make_samples(2, "seqrec", 0)
    _, tok = tiny_model([train], "seqrec")
    masked = RecDataModule(tok, train, None, task=SEQREC, train_on_inputs=False).encode(train)[0]
    full = RecDataModule(tok, train, None, task=SEQREC, train_on_inputs=True).encode(train)[0]
    assert full["labels"][1:] == full["input_ids"][1:]  # (nothing predicts the first token: it is -100)
    n_prompt = len(tok(SEQREC.prompt(train.iloc[0]))["input_ids"])
    assert masked["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert masked["labels"][n_prompt:] == full["labels"][n_prompt:]


def test_batches_are_left_padded():
    train = make_samples(4, "ctr", 0)
    _, tok = tiny_model([train], "ctr")
    data = RecDataModule(tok, train, None, task=CTR, batch_size=4)
    data.setup()
    batch = data.collate(data.train_set)
    assert batch["attention_mask"][:, -1].all()          # every sample ends at the last column
    assert batch["label"].tolist() == train["label"].tolist()


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp"])
def test_trainer_configs_have_exactly_the_expected_keys(name):
    conf = trainer_conf(name)
    assert conf.pop("_target_") == "goracs.models.finetune.TrainerConfig"
    assert list(conf) == [f.name for f in dataclasses.fields(TrainerConfig)]
    assert conf["lightning"]["_target_"] == "lightning.pytorch.Trainer"
    assert TrainerConfig.of(trainer_conf(name)).cutoff_len == 512  # the top-level cutoff_len


def test_fsdp_strategy_node_instantiates():
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    node = OmegaConf.load(CONF / "fsdp.yaml").lightning.strategy
    assert isinstance(instantiate(node), FSDPStrategy)


def test_bad_trainer_config_names_the_key(tmp_path):
    train = make_samples(4, "seqrec", 0)
    model, tok = tiny_model([train], "seqrec")
    with pytest.raises(ValueError, match=r"trainer\.learning_rate: unknown option; expected one of \[.*'lr'"):
        fine_tune(model, tok, train, train, task=SEQREC, faithful=True,
                  trainer={**trainer_conf(), "learning_rate": 1e-3}, out_dir=tmp_path, seed=0)
    no_patience = {k: v for k, v in trainer_conf().items() if k != "patience"}
    with pytest.raises(ValueError, match=r"trainer\.patience: missing"):
        fine_tune(model, tok, train, train, task=SEQREC, faithful=True, trainer=no_patience, out_dir=tmp_path,
                  seed=0)
    with pytest.raises(ValueError, match=r"trainer\.patience=0: expected >= 1"):
        fine_tune(model, tok, train, train, task=SEQREC, faithful=True, trainer=trainer_conf(patience=0),
                  out_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="training set is empty"):
        fine_tune(model, tok, train.iloc[:0], train, task=SEQREC, faithful=True, trainer=trainer_conf(),
                  out_dir=tmp_path, seed=0)


def test_ddp_two_cpu_processes_complete_a_tiny_fit(tmp_path):
    train, valid = make_samples(16, "seqrec", 0), make_samples(4, "seqrec", 1)
    model, tok = tiny_model([train, valid], "seqrec")
    before = lora_state(model)
    result = fine_tune(model, tok, train, valid, task=SEQREC, faithful=True,
                       trainer=trainer_conf("ddp", lr=1e-2, lightning={"max_epochs": 1}), out_dir=tmp_path, seed=0)
    assert result.steps == 2                            # 16 samples / (batch 4 x 2 processes)
    assert result.ckpt.exists() and math.isfinite(result.best_val_loss)
    after = lora_state(model)                           # the trained adapter came back to this process
    assert any(not torch.equal(before[k], after[k]) for k in after)
