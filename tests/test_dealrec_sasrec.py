"""The SASRec surrogate learns a sequential rule (next item = previous + 1), and its sequences are built as stated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from goracs.errors import ConfigError
from goracs.features.sasrec import SASRec, recall_at_k, train_sasrec
from goracs.features.sequences import SequenceData, sample_negatives, sequence_data
from goracs.features.surrogate import cpu_threads

N_ITEMS = 30


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads("cpu"):
        yield


def counting(n: int, length: int, seed: int) -> pd.DataFrame:
    """Samples whose history counts up by one from a random start; ``item`` continues the count."""
    starts = np.random.default_rng(seed).integers(1, N_ITEMS - length, n)
    return pd.DataFrame({"history": [[str(s + k) for k in range(length)] for s in starts],
                         "item": [str(s + length) for s in starts]})


def test_sasrec_learns_next_is_previous_plus_one():
    catalogue = [str(i) for i in range(1, N_ITEMS + 1)]
    train = sequence_data(counting(400, 8, 0), catalogue, mode="history_and_target", max_len=50)
    valid = sequence_data(counting(200, 6, 1), catalogue, mode="history", max_len=50, with_target_as_last=True)
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, hidden_size=32, num_layers=2, num_heads=2, dropout=0.1, max_len=50)
    before = recall_at_k(model, valid, 1)
    log = train_sasrec(model, train, epochs=40, batch_size=100, lr=5e-3, weight_decay=0.0, seed=0)
    assert log.losses[-1] < 0.3 * log.losses[0]
    assert before < 0.2 and recall_at_k(model, valid, 1) >= 0.95  # hit@1: the exact next item, near always


def test_best_checkpoint_keeps_the_best_validated_epoch():
    catalogue = [str(i) for i in range(1, N_ITEMS + 1)]
    train = sequence_data(counting(200, 8, 0), catalogue, mode="history_and_target", max_len=50)
    valid = sequence_data(counting(100, 6, 1), catalogue, mode="history", max_len=50, with_target_as_last=True)
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, hidden_size=16, num_layers=2, num_heads=2, dropout=0.1, max_len=50)
    log = train_sasrec(model, train, epochs=6, batch_size=50, lr=5e-3, weight_decay=0.0, seed=0,
                       checkpoint="best", valid=valid, eval_every=2)
    assert sorted(log.valid) == [2, 4, 6]
    assert log.kept_epoch == max(log.valid, key=lambda e: (log.valid[e], -e))
    assert recall_at_k(model, valid, 5) == pytest.approx(log.valid[log.kept_epoch])


def test_sequences_official_history_mode_and_truncation():
    frame = pd.DataFrame({"history": [["1", "2", "3"], ["4"], []], "item": ["5", "6", "7"]})
    catalogue = [str(i) for i in range(1, 8)]
    official = sequence_data(frame, catalogue, mode="history", max_len=50)
    # history [1,2,3]: inputs [1,2] -> targets [2,3]; a 1-item history gives nothing; the item is never seen
    assert official.inputs.tolist() == [[1, 2], [0, 0], [0, 0]]
    assert official.targets.tolist() == [[2, 3], [0, 0], [0, 0]]
    both = sequence_data(frame, catalogue, mode="history_and_target", max_len=2)
    assert both.inputs.tolist() == [[2, 3], [0, 4], [0, 0]]  # [1,2,3,5] keeps its last 2 inputs
    assert both.targets.tolist() == [[3, 5], [0, 6], [0, 0]]
    evaluation = sequence_data(frame, catalogue, mode="history", max_len=50, with_target_as_last=True)
    assert evaluation.inputs.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    assert evaluation.targets.tolist() == [[0, 0, 5], [0, 0, 6], [0, 0, 0]]
    with pytest.raises(ConfigError, match="features.surrogate.sequence"):
        sequence_data(frame, catalogue, mode="everything", max_len=50)


def test_padding_does_not_change_the_outputs():
    """Left padding to a longer width (up to the official max_len) leaves the real positions' outputs unchanged."""
    torch.manual_seed(0)
    model = SASRec(9, hidden_size=8, num_layers=2, num_heads=2, max_len=10).eval()
    short = torch.tensor([[0, 3, 4, 5]])
    padded = torch.tensor([[0] * 6 + [3, 4, 5]])
    assert torch.allclose(model(short)[:, 1:], model(padded)[:, 6:], atol=1e-6)


def test_negatives_avoid_the_rows_own_items():
    data = SequenceData(inputs=np.array([[1, 2, 3]] * 50), targets=np.array([[2, 3, 4]] * 50),
                        exclude=np.array([[1, 2, 3, 4]] * 50), n_items=6, max_len=50)
    neg = sample_negatives(data, np.random.default_rng(0))
    assert set(np.unique(neg)) == {5, 6}
