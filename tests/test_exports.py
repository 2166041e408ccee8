"""goracs.exports: the PEFT adapter folder reloads to the same model; the official coreset file is exact."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, PeftModel

from conftest import CTR, SEQREC
from goracs.exports import save_adapter, write_official_coreset
from goracs.models.backbone import TinyLlamaBackbone
from goracs.models.encoding import tokenizer_corpus
from goracs.models.lora import attach_lora
from test_features import LORA, make_samples, tiny_model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_adapter_round_trip(tmp_path):
    samples = make_samples("seqrec")
    model, tok = tiny_model(samples, random_b=True)
    ids = torch.tensor(tok(samples.train["input"].tolist()[:3], padding="max_length", truncation=True,
                           max_length=24)["input_ids"])
    expected = _logits(model, ids)

    folder = tmp_path / "out" / "adapter"
    folder.mkdir(parents=True)
    (folder / "stale.txt").write_text("older export")
    assert save_adapter(model, folder) == folder
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["adapter"]  # no temporary folders left

    def fresh_base():
        return TinyLlamaBackbone().load(tokenizer_corpus(samples))[0]

    reloaded = PeftModel.from_pretrained(fresh_base(), folder)
    torch.testing.assert_close(_logits(reloaded, ids), expected, atol=1e-6, rtol=0)
    ours = attach_lora(fresh_base(), LoraConfig(**LORA), lora_init=str(folder))
    torch.testing.assert_close(_logits(ours, ids), expected, atol=1e-6, rtol=0)
    # The LoRA must matter, or the comparison proves nothing.
    assert (_logits(fresh_base(), ids) - expected).abs().max() > 1e-3


def test_adapter_unwraps_compile_and_rejects_plain_model(tmp_path):
    samples = make_samples("ctr")
    model, _ = tiny_model(samples, random_b=False)

    class Compiled(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert (save_adapter(Compiled(model), tmp_path / "a") / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        save_adapter(model.get_base_model(), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def _train(n: int = 10) -> pd.DataFrame:
    titles = ["Amélie (2001)", "Heat", "Léon (1994)", "Crouching Tiger, Hidden Dragon (2000)"]
    return pd.DataFrame({
        "instruction": [f"instruction {i}" for i in range(n)],
        "input": [f'User Preference: "{titles[i % 4]}"\nWhether the user will like "{titles[(i + 1) % 4]}"?'
                  for i in range(n)],
        "output": ["Yes." if i % 2 else "No." for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "history": [[titles[i % 4]] for i in range(n)],
    })


def test_official_coreset_round_trip(tmp_path):
    train = _train()
    indices = np.array([7, 0, 3, 2])
    path = write_official_coreset(train, indices, tmp_path / "coreset_official.json", task=CTR)
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert rows == [{k: train.loc[i, k] for k in ("instruction", "input", "output")} for i in indices]
    assert all(list(r) == ["instruction", "input", "output"] for r in rows)
    text = path.read_text(encoding="utf-8")
    assert "Amélie (2001)" in text and "\\u00e9" not in text
    assert text.startswith('[\n    {\n        "instruction"')
    assert [p.name for p in tmp_path.iterdir()] == ["coreset_official.json"]


@pytest.mark.parametrize("indices, match", [
    ([1, 12], "coreset index 12 is outside the 10 training samples"),
    ([-1], "coreset index -1 is outside"),
    ([3, 4, 3], "coreset index 3 is repeated"),
    ([], "non-empty"),
    ([1.0, 2.0], "integers"),
])
def test_official_coreset_bad_indices(tmp_path, indices, match):
    with pytest.raises(ValueError, match=match):
        write_official_coreset(_train(), indices, tmp_path / "c.json", task=CTR)
    assert not (tmp_path / "c.json").exists()


def test_official_coreset_bad_frame(tmp_path):
    with pytest.raises(ValueError, match=r"\['output'\]"):
        write_official_coreset(_train().drop(columns="output"), [0], tmp_path / "c.json", task=CTR)
    bad = _train()
    bad.loc[2, "input"] = None
    with pytest.raises(ValueError, match="training sample 2 has non-text"):
        write_official_coreset(bad, [1, 2], tmp_path / "c.json", task=SEQREC)


def test_a_job_leaves_a_peft_adapter_and_the_official_coreset(tmp_path):
    """End to end on tiny_llama: job/adapter loads with PeftModel.from_pretrained and carries the trained (non-zero)
    lora_B; job/coreset_official.json holds exactly the selected training rows in the official format."""
    import json as _json

    import torch as _torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from peft import PeftModel

    from conftest import compose_run_config
    from goracs.data import prepare_samples
    from goracs.models.encoding import tokenizer_corpus
    from goracs.run import run

    cfg = compose_run_config(["data.max_train=24", "data.max_valid=8", "data.max_test=4", "model=tiny_llama",
                              "trainer.lightning.max_epochs=1", "trainer.warmup_steps=0", "eval.max_new_tokens=4",
                              "eval.num_beams=1", "logger=none", "budget=6", "selection=random"],
                             tmp_path / "job", tmp_path / "cache")
    assert run(cfg)["status"] == "ok"
    plain = lambda n: OmegaConf.to_container(n, resolve=True)  # noqa: E731
    samples = prepare_samples(plain(cfg.data), instantiate(cfg.task), int(cfg.data_seed), tmp_path / "cache")
    base, _ = instantiate(cfg.model.backbone).load(tokenizer_corpus(samples))
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "job" / "adapter"))
    lora_b = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(_torch.count_nonzero(p) > 0 for p in lora_b)  # trained away from B = 0

    picked = _json.loads((tmp_path / "job" / "selected_indices.json").read_text())["indices"]
    official = _json.loads((tmp_path / "job" / "coreset_official.json").read_text())
    expected = samples.train.iloc[picked][["instruction", "input", "output"]].to_dict("records")
    assert official == expected and len(official) == 6
