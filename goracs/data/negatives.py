"""Seeded negative items for SeqRec test samples: ``k`` distinct catalogue items the user never interacted with.

Each sample gets its own generator seeded from ``(seed, blake2b(user, position))``, so a sample's negatives do
not depend on which other samples are drawn or in what order (a capped test set keeps the negatives of the full
one). The official code instead resets ``random.seed(42)`` inside every call (quirk (f)), which gives every user
with the same history the same list; we keep per-sample seeding and document the difference.

Sampling is by rejection: draw ``k + margin`` ids uniformly with numpy, drop seen ones and repeats, repeat until
``k`` remain. When more than half the catalogue is seen, draw directly from the explicit complement instead.
"""

from __future__ import annotations

import hashlib

import numpy as np
from tqdm import tqdm


def sample_negatives(
    users: list[str],
    positions: np.ndarray,
    seen: dict[str, np.ndarray],
    n_items: int,
    k: int,
    seed: int,
) -> list[np.ndarray]:
    """Return, per sample, ``k`` distinct item codes in ``[0, n_items)`` outside ``seen[user]``.

    ``seen[user]`` holds the sorted unique codes of every item the user interacted with (targets included).

    ``positions`` identifies the sample within its user (any stable integer). Raises ``ValueError`` naming the
    user when fewer than ``k`` unseen items exist.
    """
    out = []
    seen_sets: dict[str, set[int]] = {}  # built once per user; users repeat across test samples
    for user, pos in tqdm(zip(users, positions), total=len(users), desc="negatives", mininterval=2, leave=False,
                          disable=len(users) < 5000):
        user_seen = seen[user]
        free = n_items - len(user_seen)
        if free < k:
            raise ValueError(
                f"cannot draw {k} negatives for user {user!r}: they interacted with {len(user_seen)} of the "
                f"{n_items} catalogue items, leaving {free}; lower data.n_negatives or drop this user"
            )
        rng = np.random.default_rng([seed, _stable_hash(user, int(pos))])
        if user not in seen_sets:
            seen_sets[user] = set(user_seen.tolist())
        out.append(_draw(rng, user_seen, seen_sets[user], n_items, k))
    return out


def _draw(rng: np.random.Generator, seen: np.ndarray, seen_set: set[int], n_items: int, k: int) -> np.ndarray:
    if len(seen) * 2 > n_items:
        free = np.setdiff1d(np.arange(n_items), seen, assume_unique=True)
        return rng.choice(free, size=k, replace=False)
    # Fewer than half the items are seen, so each round keeps > 1/2 of its draws; the user's own set is small.
    picked: dict[int, None] = {}  # insertion-ordered: a uniform random k-subset, in random order
    while len(picked) < k:
        for x in rng.integers(0, n_items, size=2 * k + 16).tolist():
            if x not in seen_set:
                picked[x] = None
    return np.fromiter(picked, dtype=np.int64, count=len(picked))[:k]


def _stable_hash(user: str, position: int) -> int:
    digest = hashlib.blake2b(f"{user}\x1f{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
