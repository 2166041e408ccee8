"""Each loader on the real files in ../shared/data, with the counts their READMEs verify, plus config checks."""

from __future__ import annotations

import gzip
import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_fixtures import REPO, SHARED, data_config
from omegaconf import OmegaConf

from goracs.data import clean_tables
from goracs.data.amazon import AmazonReviews
from goracs.data.dealrec import DealRecSequences
from goracs.data.movielens import MovieLens1M, MovieLens100K, MovieLensLatest
from goracs.data.prepare import _OPTION_KEYS, _TABLE_KEYS


def _counts(tables):
    inter = tables.interactions
    return len(inter), inter["user"].nunique(), inter["item"].nunique()


def test_ml100k_grouplens_counts(shared_data):
    tables = MovieLens100K(str(shared_data / "ml-100k")).load()
    assert _counts(tables) == (100_000, 943, 1_682)
    assert len(tables.items) == 1_682
    # latin-1 decoding: README names this accented title
    assert "Misérables, Les (1995)" in set(tables.items["title"])
    assert tables.interactions["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]


def test_recbole_copy_equals_grouplens(shared_data):
    ours = MovieLens100K(None).load()  # the copy inside the recbole wheel
    theirs = MovieLens100K(str(shared_data / "ml-100k")).load()
    key = ["user", "item", "timestamp"]
    a = ours.interactions.sort_values(key).reset_index(drop=True)
    b = theirs.interactions.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    titles = ours.items.merge(theirs.items, on="item", suffixes=("_rb", "_gl"))
    differ = titles[titles["title_rb"].str.strip() != titles["title_gl"].str.strip()]
    # RecBole's own edits: "unkonwn" for "unknown", and item 1412's "(1995) (V)" split into year "V"
    assert sorted(differ["item"].tolist()) == ["1412", "267"]


def test_ml_latest_small_counts(shared_data):
    tables = MovieLensLatest(str(shared_data / "ml-latest-small")).load()
    assert _counts(tables) == (100_836, 610, 9_724)
    assert len(tables.items) == 9_742
    assert (tables.interactions["rating"] > 3).sum() == 61_716
    clean = clean_tables(tables, min_title_len=1, append_brand=False, name="mls")
    assert len(clean.items) == 9_724  # catalogue = rated items only


def test_gift_cards_counts_and_title_cleaning(shared_data):
    src = AmazonReviews(str(shared_data / "amazon2018_gift_cards"), "Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz")
    tables = src.load()
    assert _counts(tables) == (2_972, 458, 148)
    clean = clean_tables(tables, min_title_len=1, append_brand=False, name="gift")
    assert len(clean.interactions) == 2_965  # 7 repeated (user, asin) pairs dropped
    assert len(clean.items) == 148
    titles = clean.items["title"]
    assert (titles == titles.str.strip()).all()
    assert not titles.str.contains("&amp;").any()
    assert "Dominos Pizza Gift Cards - E-mail Delivery" in set(titles)


def test_gift_cards_repeated_pair_keeps_last(shared_data):
    path = shared_data / "amazon2018_gift_cards" / "Gift_Cards_5.json.gz"
    with gzip.open(path, "rt") as f:
        records = [json.loads(line) for line in f]
    last = {}
    for r in records:
        last[(r["reviewerID"], r["asin"])] = r["unixReviewTime"]
    src = AmazonReviews(str(path.parent), path.name, "meta_Gift_Cards.json.gz")
    clean = clean_tables(src.load(), min_title_len=1, append_brand=False, name="gift")
    got = dict(zip(zip(clean.interactions["user"], clean.interactions["item"]), clean.interactions["timestamp"]))
    assert got == last


def test_magazine_html_titles_are_unusable(shared_data):
    folder = shared_data / "amazon2018_magazine_subscriptions"
    src = AmazonReviews(str(folder), "Magazine_Subscriptions_5.json.gz", "meta_Magazine_Subscriptions.json.gz")
    tables = src.load()
    assert _counts(tables) == (2_375, 348, 157)
    clean = clean_tables(tables, min_title_len=1, append_brand=False, name="magazine")
    assert sorted(clean.items["title"]) == ["Gourmet (1-year)", "SmartMoney (1-year)", "Woman's Day"]


def test_dealrec_games_counts(shared_data):
    tables = DealRecSequences(str(shared_data / "dealrec_games")).load()
    assert _counts(tables) == (342_329, 49_156, 17_332)
    assert tables.interactions["split"].value_counts().to_dict() == {"train": 299_987, "valid": 22_609, "test": 19_733}
    assert len(tables.items) == 17_332
    # titles keep their inner text; leading/trailing spaces survive parsing (cleaning strips them later)
    assert (tables.items["title"] != tables.items["title"].str.strip()).sum() == 342


def test_ml1m_layout_parses_double_colon(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    movies = "10::Misérables, Les (1995)::Drama\n20::Heat (1995)::Action\n"
    (tmp_path / "movies.dat").write_bytes(movies.encode("latin-1"))
    tables = MovieLens1M(str(tmp_path)).load()
    assert tables.interactions.to_dict("list") == {
        "user": ["1", "1", "2"], "item": ["10", "20", "10"], "rating": [5.0, 3.0, 4.0],
        "timestamp": [978300760, 978302109, 978301968]}
    assert tables.items["title"].tolist() == ["Misérables, Les (1995)", "Heat (1995)"]


def test_amazon2014_python_dict_lines(tmp_path):
    reviews = [{"reviewerID": "u1", "asin": "a", "overall": 5.0, "unixReviewTime": 1},
               {"reviewerID": "u1", "asin": "b", "overall": 2.0, "unixReviewTime": 2}]
    (tmp_path / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    meta = ("{'asin': 'a', 'title': \"Kellogg's Corn Flakes\", 'brand': 'Kellogg', "
            "'categories': [['Grocery', 'Cereal']]}\n"
            "{'asin': 'b', 'title': 'Tea &amp; Honey', 'brand': ''}\n")
    with gzip.open(tmp_path / "meta.json.gz", "wt") as f:
        f.write(meta)
    src = AmazonReviews(str(tmp_path), "reviews.json", "meta.json", line_format="python")  # finds meta.json.gz
    clean = clean_tables(src.load(), min_title_len=1, append_brand=True, name="food")
    assert clean.items["title"].tolist() == ["Kellogg's Corn Flakes - Kellogg", "Tea & Honey"]
    assert clean.items["category"].tolist() == ["Grocery > Cereal", None]


def test_movies_title_rule_len_over_50_after_brand():
    from goracs.data import Tables
    items = pd.DataFrame({"item": ["a", "b"], "title": ["x" * 45, "y" * 45], "brand": ["Brand", None]})
    inter = pd.DataFrame({"user": ["u", "u"], "item": ["a", "b"], "rating": [5.0, 4.0], "timestamp": [1, 2]})
    clean = clean_tables(Tables(inter, items), min_title_len=50, append_brand=True, name="movies")
    assert clean.items["title"].tolist() == ["x" * 45 + " - Brand"]  # 53 > 50 kept; 45 dropped


@pytest.mark.parametrize("yaml_path", sorted((REPO / "conf" / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_are_airtight(yaml_path: Path):
    cfg = OmegaConf.load(yaml_path)
    data = OmegaConf.to_container(cfg)
    assert set(data) <= _TABLE_KEYS | _OPTION_KEYS
    assert {"name", "domain", "source"} <= set(data)
    module, _, cls = data["source"]["_target_"].rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    keys = set(data["source"]) - {"_target_"}
    assert keys == set(params), f"{yaml_path.name}: source keys {keys} vs constructor {set(params)}"


def test_task_configs():
    for name in ("seqrec", "ctr"):
        task = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml"))
        target = task.pop("_target_")  # the task's class; its keys are the constructor's parameters
        assert task == {"name": name, "faithful_prompts": True, "like_threshold": 3}
        module, _, cls = target.rpartition(".")
        assert set(inspect.signature(getattr(importlib.import_module(module), cls)).parameters) == set(task)


def test_shared_presets_resolve():  # paths only, nothing is read: no need for the files themselves
    for preset, folder in (("gift_cards", "amazon2018_gift_cards"), ("dealrec_games", "dealrec_games")):
        assert Path(data_config(preset)["source"]["path"]) == SHARED / folder
    assert np.isclose(data_config("ml100k")["valid_size"], 0.1)
