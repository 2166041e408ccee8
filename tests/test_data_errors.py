"""Bad input gets a clear error naming the file, line, option or user (issue 2, item 6)."""

from __future__ import annotations

import gzip
import shutil

import pandas as pd
import pytest
from data_fixtures import data_config

from conftest import task_named
from goracs.data import SampleOptions, Tables, build_samples, prepare_samples
from goracs.data.amazon import AmazonReviews
from goracs.data.dealrec import DealRecSequences
from goracs.data.movielens import MovieLens1M, MovieLens100K, MovieLensLatest


def _ml100k(tmp_path, data_lines: str, item_lines: str = "1|Toy Story (1995)|x\n2|Heat (1995)|x\n"):
    (tmp_path / "u.data").write_text(data_lines)
    (tmp_path / "u.item").write_bytes(item_lines.encode("latin-1"))
    return MovieLens100K(str(tmp_path))


def test_missing_folder_names_it_and_the_expected_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*ratings\.csv, movies\.csv"):
        MovieLensLatest(str(missing)).load()


def test_missing_file_is_named(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t10\n")
    with pytest.raises(FileNotFoundError, match=r"lacks u\.item"):
        MovieLens100K(str(tmp_path)).load()


def test_missing_path_through_prepare_samples(tmp_path):
    data = data_config("gift_cards", **{"source.path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"Gift_Cards_5\.json\.gz.*meta_Gift_Cards\.json\.gz"):
        prepare_samples(data, task_named("seqrec"), 0, None)


def test_malformed_movielens_line_names_file_and_line(tmp_path):
    src = _ml100k(tmp_path, "1\t1\t5\t100\n1\t2\t4\t200\n2\t1\tfive\t300\n")
    with pytest.raises(ValueError, match=r"u\.data:3: malformed line, column 'rating'.*'five'"):
        src.load()
    src = _ml100k(tmp_path, "1\t1\t5\t100\n1\t2\t4\n")  # a field short
    with pytest.raises(ValueError, match=r"u\.data:2: malformed line, column 'timestamp'"):
        src.load()


def test_malformed_ml1m_and_latest(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3\n")
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action\n")
    with pytest.raises(ValueError, match=r"ratings\.dat:2: malformed line, expected 4"):
        MovieLens1M(str(tmp_path)).load()
    (tmp_path / "ratings.csv").write_text("user,movieId,rating,timestamp\n1,10,4.0,5\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n10,Heat (1995),Action\n")
    with pytest.raises(ValueError, match=r"ratings\.csv:1: header lacks column\(s\) \['userId'\]"):
        MovieLensLatest(str(tmp_path)).load()


def test_malformed_amazon_json_line(tmp_path):
    lines = ['{"reviewerID": "u", "asin": "a", "overall": 5.0, "unixReviewTime": 1}', '{"reviewerID": "u", "asin": ']
    with gzip.open(tmp_path / "r.json.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (tmp_path / "m.json").write_text('{"asin": "a", "title": "A"}\n')
    with pytest.raises(ValueError, match=r"r\.json\.gz:2: malformed JSON line"):
        AmazonReviews(str(tmp_path), "r.json.gz", "m.json").load()


def test_malformed_amazon_2014_line(tmp_path):
    (tmp_path / "r.json").write_text('{"reviewerID": "u", "asin": "a", "overall": 5.0, "unixReviewTime": 1}\n')
    (tmp_path / "m.json").write_text("{'asin': 'a', 'title': 'A'}\n{'asin': 'b', 'title': __import__('os')}\n")
    with pytest.raises(ValueError, match=r"m\.json:2: malformed line, neither JSON nor a Python dict literal"):
        AmazonReviews(str(tmp_path), "r.json", "m.json", line_format="python").load()


def test_malformed_dealrec_line(tmp_path, shared_data):
    for name in ("sequences_valid.txt", "sequences_test.txt", "items.tsv"):
        shutil.copy(shared_data / "dealrec_games" / name, tmp_path / name)
    (tmp_path / "sequences_train.txt").write_text("1 1 2 3\n2 4 five\n")
    with pytest.raises(ValueError, match=r"sequences_train\.txt:2: malformed line"):
        DealRecSequences(str(tmp_path)).load()


def test_unknown_encoding_names_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"data\.source\.encoding='latin-99' is not a known text encoding"):
        MovieLens100K(str(tmp_path), encoding="latin-99")
    data = data_config("ml100k", **{"source.encoding": "latin-99"})
    with pytest.raises(ValueError, match=r"latin-99"):
        prepare_samples(data, task_named("seqrec"), 0, None)


def test_wrong_encoding_is_reported(tmp_path):
    src = _ml100k(tmp_path, "1\t1\t5\t100\n", item_lines="1|Misérables, Les (1995)|x\n")
    src.encoding = "utf-8"
    with pytest.raises(ValueError, match=r"u\.item: cannot decode with data\.source\.encoding='utf-8'"):
        src.load()


def test_filter_that_leaves_nothing():
    with pytest.raises(ValueError, match=r"no interaction is left after the title filter.*min_title_len=1000"):
        prepare_samples(data_config("ml100k", min_title_len=1000), task_named("seqrec"), 0, None)


def test_negatives_impossible_names_the_user():
    inter = pd.DataFrame({"user": ["greedy"] * 8 + ["u2", "u2"], "item": [f"i{k}" for k in range(8)] + ["i0", "i1"],
                          "rating": 4.0, "timestamp": list(range(10))})
    items = pd.DataFrame({"item": [f"i{k}" for k in range(10)], "title": [f"Title {k}" for k in range(10)]})
    inter["timestamp"] = [1, 2, 3, 4, 5, 6, 7, 100, 8, 9]  # greedy's last item is the latest target -> test
    with pytest.raises(ValueError, match=r"negatives for user 'greedy'.*8 of the 10"):
        build_samples(Tables(inter, items), task=task_named("seqrec"), domain="generic", name="toy", like_threshold=3,
                      faithful=True, options=SampleOptions(valid_size=0, test_size=1, n_negatives=5), seed=0)


def test_ctr_on_dealrec_is_refused(shared_data):
    with pytest.raises(ValueError, match=r"task=ctr needs a rating.*DEALRec"):
        prepare_samples(data_config("dealrec_games"), task_named("ctr"), 0, None)


@pytest.mark.parametrize("override, message", [
    ({"valid_sise": 0.1}, r"data\.valid_sise: unknown data option; expected one of"),
    ({"valid_size": 1.5}, r"data\.valid_size=1\.5; expected a sample count"),
    ({"valid_size": 50_000, "test_size": 50_000}, r"leaving none for training"),
    ({"domain": "books"}, r"data\.domain='books' is unknown"),
    ({"max_train": -3, "valid_size": 10, "test_size": 10}, r"data\.max_train=-3"),
])
def test_bad_options(override, message):
    with pytest.raises(ValueError, match=message):
        prepare_samples(data_config("ml100k", **override), task_named("seqrec"), 0, None)


def test_presplit_sizes(shared_data):  # an unknown task is Hydra's error now: no conf/task/<name>.yaml to compose
    with pytest.raises(ValueError, match=r"fixes its own split"):
        prepare_samples(data_config("dealrec_games", valid_size=0.1), task_named("seqrec"), 0, None)
