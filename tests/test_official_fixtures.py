"""Our CCS, D2-Pruning and DEALRec held against their authors' code on the same inputs.

The fixtures in ``tests/fixtures/official/`` are outputs of the official repositories (commits and commands in its
README.md), produced outside the project by ``drive_official.py``; no official code is imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from goracs.selection.ccs import CCSSelector
from goracs.selection.pool import ArrayFeatures, Pool

FIXTURES = Path(__file__).parent / "fixtures" / "official"


def fixture(name: str) -> tuple[dict, dict]:
    with np.load(FIXTURES / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((FIXTURES / f"{name}.json").read_text())


def pool_of(**train) -> Pool:
    n = len(next(iter(train.values())))
    return Pool(size=n, features=ArrayFeatures(train=train))


CCS, CCS_PARAMS = fixture("ccs")
CCS_RUNS = [(case, seed) for case, p in CCS_PARAMS.items() for seed in p["seeds"]]


# --- CCS: haizhongzheng/Coverage-centric-coreset-selection, CoresetSelection.mislabel_mask + stratified_sampling ----

@pytest.mark.parametrize("case, seed", CCS_RUNS)
def test_ccs_official_variant_selects_the_official_indices(case, seed):
    p, scores = CCS_PARAMS[case], CCS[f"{case}__scores"]
    ccs = CCSSelector(score="el2n", hard_fraction=p["beta"], drop_highest=p["drop_highest"], n_strata=50)
    result = ccs.select(pool_of(el2n=scores), p["m"], seed=seed)
    assert result.indices.tolist() == CCS[f"{case}__seed{seed}__indices"].tolist()
    assert result.traces["per_stratum"] == CCS[f"{case}__seed{seed}__per_stratum"].tolist()
