"""Sample construction: windows, splits, negatives, labels and prompt texts, checked against the raw files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from data_fixtures import built, data_config

from conftest import task_named
from goracs.data import SampleOptions, Tables, build_samples, prepare_samples, sample_stats
from goracs.data.prompts import alpaca_example

EXPECTED_SEQREC_117 = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request. \n\n"
    "### Instruction:\nGiven a list of movies ad TVs the user has watched before, please recommend the title of a new "
    "movie or TV that the user will like to watch in the following time.\n\n"
    "### Input:\nThe user has watched the following movies and TVs before:\"Scream (1996)\", \"Chasing Amy (1997)\", "
    "\"Devil's Advocate, The (1997)\", \"Saint, The (1997)\", \"Starship Troopers (1997)\", \"Life Less Ordinary, A "
    "(1997)\", \"Volcano (1997)\", \"Spawn (1997)\", \"Return of the Jedi (1983)\", \"Swingers (1996)\"\n \n\n"
    "### Response:\n\"Trainspotting (1996)\""
)
EXPECTED_CTR_117_INPUT = (
    "User Preference: \"Chasing Amy (1997)\", \"Devil's Advocate, The (1997)\", \"Starship Troopers (1997)\", "
    "\"Life Less Ordinary, A (1997)\", \"Volcano (1997)\", \"Spawn (1997)\", \"Return of the Jedi (1983)\", "
    "\"Swingers (1996)\"\nUser Unpreference: \"Scream (1996)\", \"Saint, The (1997)\"\n"
    "Whether the user will like the target movie titled \"Trainspotting (1996)\"?"
)


def _all(samples) -> pd.DataFrame:
    return pd.concat([samples.train, samples.valid, samples.test], keys=["train", "valid", "test"]).reset_index(0)


def _row(samples, user: str, item: str) -> pd.Series:
    df = _all(samples)
    hit = df[(df["user"] == user) & (df["item"] == item)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_ml100k_full_prompt_matches_hand_built_string():
    # user 117's 11th rating by time (u.data) is Trainspotting; the 10 before it form the history
    row = _row(built("ml100k", "seqrec"), "117", "475")
    assert alpaca_example(row["instruction"], row["input"], row["output"], header="train") == EXPECTED_SEQREC_117
    ctr = _row(built("ml100k", "ctr"), "117", "475")
    assert ctr["input"] == EXPECTED_CTR_117_INPUT
    assert ctr["output"] == "Yes" and ctr["label"] == 1
    assert ctr["instruction"] == ('Given the user\'s preference and unpreference, identify whether the user will like '
                                  'the target movie by answering "Yes" or "No".')


def _udata(shared) -> pd.DataFrame:
    df = pd.read_csv(shared / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "ts"], dtype=str)
    return df.astype({"rating": float, "ts": int})


def test_ml100k_sample_count_and_split_sizes(shared_data):
    lengths = _udata(shared_data).groupby("user").size().to_numpy()
    expected = int(np.sum(lengths - np.minimum(10, lengths - 1)))  # range(min(10, L-1), L) per user
    stats = sample_stats(built("ml100k", "seqrec"), task_named("seqrec"))
    assert stats["samples_train"] + stats["samples_valid"] + stats["samples_test"] == expected == 90_570
    assert stats["samples_valid"] == stats["samples_test"] == round(0.1 * expected)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)


@pytest.mark.parametrize("preset", ["ml100k", "ml_latest_small", "gift_cards"])
def test_invariants_on_real_data(preset, shared_data):
    overrides = ()
    if preset == "ml_latest_small":
        overrides = (("source.path", str(shared_data / "ml-latest-small")), ("max_test", 2000))
    samples = built(preset, "seqrec", 0, overrides)
    df = _all(samples)
    assert all(len(h) <= 10 for h in df["history"])
    assert not any(t in h for t, h in zip(df["item"], df["history"]))
    assert samples.train["timestamp"].max() <= samples.valid["timestamp"].min()
    assert samples.valid["timestamp"].max() <= samples.test["timestamp"].min()
    # negatives: 99 distinct catalogue items outside the user's whole history (all interactions, target included)
    seen = df.groupby("user")["item"].agg(set).to_dict()
    for user, hist in zip(df["user"], df["history"]):
        seen[user] |= set(hist)
    catalogue = set(samples.items["item"])
    for user, item, negs in zip(samples.test["user"], samples.test["item"], samples.test["negatives"]):
        assert len(negs) == len(set(negs)) == 99
        assert not (set(negs) & seen[user]) and item not in negs and set(negs) <= catalogue
    assert all(n == [] for n in samples.train["negatives"])


def test_negatives_exclude_raw_history(shared_data):
    raw = _udata(shared_data).groupby("user")["item"].agg(set).to_dict()
    test = built("ml100k", "seqrec").test
    assert all(not (set(n) & raw[u]) for u, n in zip(test["user"], test["negatives"]))


def test_histories_follow_raw_chronology(shared_data):
    raw = _udata(shared_data)
    raw = raw.iloc[np.lexsort((raw["ts"].to_numpy(), raw["user"].astype(int).to_numpy()))]
    seqs = raw.groupby("user")["item"].agg(list).to_dict()
    ts = raw.groupby("user")["ts"].agg(list).to_dict()
    df = _all(built("ml100k", "seqrec"))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(df), 300, replace=False):
        row = df.iloc[i]
        seq, times = seqs[row["user"]], ts[row["user"]]
        k = seq.index(row["item"])
        if len(set(times[max(k - 10, 0):k + 1])) < len(times[max(k - 10, 0):k + 1]):
            continue  # timestamp ties: order there depends on file order, which the two copies may not share
        assert row["history"] == seq[max(k - 10, 0):k]


def test_seeds_and_caps():
    full = built("ml100k", "seqrec", 0)
    caps = (("max_train", 100), ("max_valid", 30), ("max_test", 50))
    one = built("ml100k", "seqrec", 0, caps)
    two = prepare_samples(data_config("ml100k", **dict(caps)), task_named("seqrec"), 0, None)  # independent build
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(one.split(split), two.split(split))
    assert (len(one.train), len(one.valid), len(one.test)) == (100, 30, 50)
    assert one.train["timestamp"].is_monotonic_increasing  # a cap keeps chronological order
    by_sample = full.test.set_index(["user", "item"])["negatives"]
    assert [by_sample[(u, i)] for u, i in zip(one.test["user"], one.test["item"])] == one.test["negatives"].tolist()
    other = built("ml100k", "seqrec", 1, (("max_test", 300),))
    pd.testing.assert_frame_equal(other.train, full.train)  # without a cap the split does not depend on the seed
    keys = zip(other.test["user"], other.test["item"])
    differ = [by_sample[key] != negs for key, negs in zip(keys, other.test["negatives"])]
    assert np.mean(differ) > 0.99
    other_caps = built("ml100k", "seqrec", 1, caps)
    assert list(other_caps.train["user"] + "/" + other_caps.train["item"]) != list(
        one.train["user"] + "/" + one.train["item"])


def test_ctr_positive_rate_equals_share_of_liked_targets(shared_data):
    raw = _udata(shared_data)
    raw = raw.iloc[np.lexsort((raw["ts"].to_numpy(), raw["user"].astype(int).to_numpy()))]
    pos = raw.groupby("user").cumcount().to_numpy()
    length = raw.groupby("user")["item"].transform("size").to_numpy()
    targets = raw[pos >= np.minimum(10, length - 1)]
    samples = built("ml100k", "ctr")
    stats = sample_stats(samples, task_named("ctr"))
    assert stats["positive_rate"] == pytest.approx((targets["rating"] > 3).mean(), abs=1e-12)
    df = _all(samples)
    assert ((df["label"] == 1) == (df["output"] == "Yes")).all()
    assert (df["label"] == (df["rating"] > 3)).all()


def test_dealrec_split_semantics(shared_data):
    folder = shared_data / "dealrec_games"
    seqs = {s: [line.split() for line in (folder / f"sequences_{s}.txt").read_text().splitlines()]
            for s in ("train", "valid", "test")}
    samples = built("dealrec_games", "seqrec")
    assert (len(samples.train), len(samples.valid), len(samples.test)) == (49_156, 9_609, 8_696)
    n_targets = samples.test["targets"].map(len)
    assert n_targets.max() == 51 and n_targets.mean() == pytest.approx(19_733 / 8_696)
    train = samples.train.set_index("user")
    valid = samples.valid.set_index("user")
    test = samples.test.set_index("user")
    for line in (0, 1, 2, 3, 100, 4000):
        user, tr = seqs["train"][line][0], seqs["train"][line][1:]
        va, te = seqs["valid"][line][1:], seqs["test"][line][1:]
        assert train.loc[user, "item"] == tr[-1] and train.loc[user, "history"] == tr[:-1][-10:]
        if va:
            assert valid.loc[user, "item"] == va[0] and valid.loc[user, "history"] == tr[-10:]
        if te:
            assert test.loc[user, "targets"] == te and test.loc[user, "item"] == te[0]
            assert test.loc[user, "history"] == (tr + va)[-10:]
            assert not set(test.loc[user, "negatives"]) & set(tr + va + te)
    assert (samples.train["label"] == 1).all() and samples.train["rating"].isna().all()


def _toy(n_items_per_user: dict[str, int]) -> Tables:
    rows = [(u, f"{u}{k}", 4.0 if k % 2 else 2.0, 100 * k + i)
            for i, (u, n) in enumerate(n_items_per_user.items()) for k in range(n)]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    items = pd.DataFrame({"item": inter["item"], "title": "T-" + inter["item"]})
    extra = pd.DataFrame({"item": [f"z{j}" for j in range(20)], "title": [f"Z{j}" for j in range(20)]})
    return Tables(inter, pd.concat([items, extra], ignore_index=True))


def test_windows_by_hand():
    # a: 1 item -> 1 sample, empty history; b: 4 items -> 1 sample; c: 13 items -> 3 samples of 10 history items
    tables = _toy({"a": 1, "b": 4, "c": 13})
    s = build_samples(tables, task=task_named("seqrec"), domain="generic", name="toy", like_threshold=3, faithful=True,
                      options=SampleOptions(valid_size=1, test_size=1, n_negatives=5), seed=0)
    got = {(u, i): h for u, i, h in zip(*(_all(s)[c] for c in ("user", "item", "history")))}
    assert got == {("a", "a0"): [], ("b", "b3"): ["b0", "b1", "b2"],
                   ("c", "c10"): [f"c{k}" for k in range(10)], ("c", "c11"): [f"c{k}" for k in range(1, 11)],
                   ("c", "c12"): [f"c{k}" for k in range(2, 12)]}
    assert s.test["item"].tolist() == ["c12"] and s.valid["item"].tolist() == ["c11"]  # the latest targets
    assert _all(s).set_index("item").loc["a0", "input"] == "The user has interacted with the following items before:\n "
    short = build_samples(tables, task=task_named("seqrec"), domain="generic", name="toy", like_threshold=3,
                          faithful=True, options=SampleOptions(valid_size=1, test_size=1, n_negatives=5, min_history=3), seed=0)
    assert sorted(_all(short)["item"]) == ["b3", "c10", "c11", "c12"]


def test_corrected_prompts():
    tables = _toy({"b": 3})
    kw = dict(task=task_named("seqrec"), domain="movies", name="toy", like_threshold=3,
              options=SampleOptions(valid_size=0, test_size=0), seed=0)
    row = build_samples(tables, faithful=False, **kw).train.iloc[0]
    assert "movies and TVs the user" in row["instruction"]
    assert row["input"] == 'The user has watched the following movies and TVs before: "T-b0", "T-b1"'


def test_cache_roundtrip_and_reuse(tmp_path, monkeypatch):
    data = data_config("ml100k", max_train=200, max_valid=20, max_test=20)
    first = prepare_samples(data, task_named("ctr"), 3, tmp_path)
    files = list((tmp_path / "samples").glob("*.jsonl.gz"))
    assert len(files) == 1
    monkeypatch.setattr("goracs.data.prepare.build_samples", lambda *a, **k: pytest.fail("cache not reused"))
    second = prepare_samples(data, task_named("ctr"), 3, tmp_path)
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(first.split(split), second.split(split))
    pd.testing.assert_frame_equal(first.items, second.items)
    assert first.table_stats == second.table_stats
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated entry: dropped and rebuilt
    monkeypatch.undo()
    third = prepare_samples(data, task_named("ctr"), 3, tmp_path)
    pd.testing.assert_frame_equal(first.train, third.train)
