"""Rank 0 owns a multi-process job (goracs.ranks): which process is rank 0, and the selection it hands over."""

from __future__ import annotations

import json
import threading
import time

import pytest

from goracs.ranks import HANDOFF, hand_over, process_rank, runs_several_processes, take_over


@pytest.mark.parametrize(("env", "rank"), [
    ({}, 0), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0), ({"LOCAL_RANK": "1"}, 1),  # Lightning's re-executed ranks
    ({"RANK": "3", "LOCAL_RANK": "1"}, 3), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1),  # torchrun, a second node
    ({"SLURM_PROCID": "2"}, 2), ({"LOCAL_RANK": ""}, 0),
])
def test_process_rank(env, rank):
    assert process_rank(env) == rank


@pytest.mark.parametrize(("node", "several"), [
    ({"devices": 1}, False), ({"devices": 2}, True), ({"devices": [0, 1]}, True), ({"devices": [1]}, False),
    ({"devices": 1, "num_nodes": 2}, True), ({"devices": -1}, True), ({}, False),
])
def test_runs_several_processes(node, several):
    assert runs_several_processes(node) is several


def test_another_rank_takes_the_selection_handed_over_for_its_job(tmp_path):
    hand_over(tmp_path, "key-a", [3, 1, 2])
    assert take_over(tmp_path, "key-a", timeout_s=1) == [3, 1, 2]
    assert json.loads((tmp_path / HANDOFF).read_text())["config_key"] == "key-a"


def test_another_rank_waits_for_rank_0_and_ignores_another_jobs_hand_off(tmp_path):
    hand_over(tmp_path, "an-earlier-job", [9])
    timer = threading.Timer(0.3, hand_over, (tmp_path, "key-b", [5, 6]))
    timer.start()
    t0 = time.monotonic()
    assert take_over(tmp_path, "key-b", poll_s=0.05, timeout_s=10) == [5, 6]
    assert time.monotonic() - t0 >= 0.25


def test_another_rank_stops_when_rank_0_failed(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"config_key": "k", "status": "failed", "error": "boom"}))
    with pytest.raises(RuntimeError, match="rank 0 failed this job.*boom"):
        take_over(tmp_path, "k", poll_s=0.01, timeout_s=5)
    with pytest.raises(TimeoutError):
        take_over(tmp_path, "other", poll_s=0.01, timeout_s=0.05)
