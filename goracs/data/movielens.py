"""MovieLens in the GroupLens raw layouts: ml-100k, ml-1m and ml-latest(-small).

Each class is a ``TableSource``: ``load()`` returns interactions (user, item, rating, timestamp) and items
(item, title). Ids are kept as strings, ratings as floats (0.5-5 stars), timestamps as int Unix seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from goracs.data.recbole_files import RecBoleAtomic, recbole_example_dir
from goracs.data.tables import Tables, check_encoding, numeric_column, read_table, require_files


class MovieLens100K:
    """``u.data`` (TAB: user, item, rating, time) and ``u.item`` (``|``-separated, title in field 2, latin-1).

    ``path=None`` reads the RecBole atomic copy of ml-100k inside the installed ``recbole`` wheel (same 100,000
    ratings; titles rebuilt as ``"Title (year)"``, identical to ``u.item`` except items 267 ("unkonwn" there) and
    1412, whose "(1995) (V)" RecBole turned into year "V").
    """

    def __init__(self, path: str | None = None, encoding: str = "latin-1"):
        self.path = path
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        if self.path is None:
            folder = recbole_example_dir("ml-100k")
            return RecBoleAtomic(str(folder), dataset="ml-100k", title_field="movie_title",
                                 year_field="release_year").load()
        data, item = require_files(self.path, ["u.data", "u.item"], "MovieLens 100K (GroupLens layout)")
        ratings = read_table(data, sep="\t", names=["user", "item", "rating", "timestamp"], encoding=self.encoding)
        items = read_table(item, sep="|", names=None, encoding=self.encoding)
        if items.shape[1] < 2:
            raise ValueError(f"{item}: expected '|'-separated rows 'movie_id|title|...', got {items.shape[1]} field(s)")
        items = items.iloc[:, :2].set_axis(["item", "title"], axis=1)
        return Tables(interactions=_typed(ratings, data), items=items)


class MovieLens1M:
    """``ratings.dat`` (``user::movie::rating::time``) and ``movies.dat`` (``movie::title::genres``), latin-1."""

    def __init__(self, path: str, encoding: str = "latin-1"):
        self.path = path
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        rat, mov = require_files(self.path, ["ratings.dat", "movies.dat"], "MovieLens 1M (GroupLens layout)")
        ratings = _read_double_colon(rat, ["user", "item", "rating", "timestamp"], self.encoding)
        movies = _read_double_colon(mov, ["item", "title", "genres"], self.encoding)
        return Tables(interactions=_typed(ratings, rat), items=movies[["item", "title"]])


class MovieLensLatest:
    """ml-latest / ml-latest-small: ``ratings.csv`` and ``movies.csv`` (UTF-8, header row, quoted titles)."""

    def __init__(self, path: str, encoding: str = "utf-8"):
        self.path = path
        self.encoding = check_encoding(encoding, "data.source.encoding")

    def load(self) -> Tables:
        rat, mov = require_files(self.path, ["ratings.csv", "movies.csv"], "MovieLens latest (GroupLens layout)")
        ratings = read_table(rat, sep=",", names=None, header=0, encoding=self.encoding)
        movies = read_table(mov, sep=",", names=None, header=0, encoding=self.encoding)
        _expect_columns(ratings, rat, ["userId", "movieId", "rating", "timestamp"])
        _expect_columns(movies, mov, ["movieId", "title"])
        ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
        items = movies.rename(columns={"movieId": "item"})[["item", "title"]]
        return Tables(interactions=_typed(ratings, rat, header_lines=1), items=items)


def _typed(df: pd.DataFrame, path: Path, *, header_lines: int = 0) -> pd.DataFrame:
    """Canonical dtypes; a missing or non-numeric rating/timestamp names the file and line."""
    for col in ("user", "item"):
        blank = np.flatnonzero(df[col].isna().to_numpy() | (df[col].astype("object") == "").to_numpy())
        if blank.size:
            raise ValueError(f"{path}:{int(blank[0]) + 1 + header_lines}: malformed line, empty '{col}' field")
    return pd.DataFrame({
        "user": df["user"].astype(str).str.strip(),
        "item": df["item"].astype(str).str.strip(),
        "rating": numeric_column(df["rating"], path, "rating", header_lines=header_lines).astype(float),
        "timestamp": numeric_column(df["timestamp"], path, "timestamp", header_lines=header_lines).astype(np.int64),
    })


def _read_double_colon(path: Path, names: list[str], encoding: str) -> pd.DataFrame:
    """Read a ``::``-separated file fast: swap the separator for TAB and use the C parser."""
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: cannot decode with data.source.encoding={encoding!r} ({err.reason})") from None
    lines = text.splitlines()
    width = len(names)
    for number, line in enumerate(lines, start=1):
        # The C parser would silently pad short rows; check the field count explicitly (cheap, 1M lines < 1 s).
        if line.count("::") != width - 1:
            raise ValueError(f"{path}:{number}: malformed line, expected {width} '::'-separated fields, got {line!r}")
    buffer = io.StringIO(text.replace("::", "\t"))
    return read_table(buffer, sep="\t", names=names, encoding=encoding)  # type: ignore[arg-type]


def _expect_columns(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}:1: header lacks column(s) {missing}; expected at least {columns}, "
                         f"got {list(df.columns)}")
