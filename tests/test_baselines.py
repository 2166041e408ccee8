"""Hand-checkable cases and independent oracles (brute force, sklearn, scipy) for every baseline and helper."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors, kneighbors_graph

from goracs.selection import ArrayFeatures, Pool
from goracs.selection.ccs import CCSSelector
from goracs.selection.d2 import D2Selector, forward_density, knn_graph, reverse_message_passing, symmetric_csr
from goracs.selection.full import FullSelector
from goracs.selection.kcenter import KCenterSelector
from goracs.selection.moderate import ModerateSelector
from goracs.selection.random import RandomSelector
from goracs.selection.sampling import allocate_budget, equal_width_strata, top_k
from goracs.selection.scored import TopScoreSelector


def pool_of(labels=None, **train):
    size = len(next(iter(train.values())))
    return Pool(size=size, features=ArrayFeatures(train=train), labels=labels)


# --- sampling helpers ----------------------------------------------------------------------------------------------

def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    assert top_k(scores, 2, largest=False).tolist() == [4, 0]


def test_allocate_budget_water_fills_smallest_strata_first():
    # sizes sorted: 0, 1, 2, 3, 10 -> budgets 0, 1, 2, 2 (= min(3, 5 // 2)), then 3 to the largest
    assert allocate_budget(np.array([10, 0, 3, 1, 2]), 8).tolist() == [3, 0, 2, 1, 2]
    assert allocate_budget(np.array([5, 5]), 3).tolist() == [1, 2]  # tie: the lower index is visited first
    assert allocate_budget(np.array([2, 4]), 100).tolist() == [2, 4]


def test_allocate_budget_always_spends_min_of_budget_and_pool():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        sizes = rng.integers(0, 12, size=rng.integers(1, 9))
        m = int(rng.integers(0, sizes.sum() + 5))
        budgets = allocate_budget(sizes, m)
        assert budgets.sum() == min(m, sizes.sum()) and (budgets <= sizes).all() and (budgets >= 0).all()


def test_equal_width_strata_puts_the_maximum_in_the_last_stratum_even_when_negative():
    assert equal_width_strata(np.array([-4.0, -3.0, -2.5, -1.0]), 3).tolist() == [0, 1, 1, 2]
    assert equal_width_strata(np.array([7.0, 7.0]), 5).tolist() == [0, 0]


# --- full, random, GraNd, EL2N ------------------------------------------------------------------------------------

class Untouchable:
    def get(self, name, split="train"):
        raise AssertionError(f"this selector must not read features (asked for {name!r})")


def test_full_and_random_never_read_features():
    pool = Pool(size=50, features=Untouchable())
    assert len(FullSelector().select(pool, 5, seed=0).indices) == 50
    picked = RandomSelector().select(pool, 5, seed=0).indices
    assert len(picked) == 5
    assert not np.array_equal(picked, RandomSelector().select(pool, 5, seed=1).indices)


def test_grand_and_el2n_keep_the_known_top_scores():
    pool = pool_of(grad_norm=np.array([0.1, 0.5, 0.3, 0.9, 0.7]), el2n=np.array([3.0, 1.0, 2.0, 0.0, 4.0]))
    assert TopScoreSelector(["grad_norm"]).select(pool, 2, seed=0).indices.tolist() == [3, 4]
    assert TopScoreSelector(["el2n"]).select(pool, 3, seed=0).indices.tolist() == [0, 2, 4]
    # offset 1 skips the single highest norm (sample 3), then takes the next two
    assert TopScoreSelector(["grad_norm"], offset=1).select(pool, 2, seed=0).indices.tolist() == [1, 4]


def test_grand_averages_seeded_repeats():
    pool = pool_of(**{"grad_norm@0": np.array([1.0, 0.0, 0.6]), "grad_norm@1": np.array([0.0, 0.9, 0.6])})
    result = TopScoreSelector(["grad_norm@0", "grad_norm@1"]).select(pool, 1, seed=0)
    assert result.indices.tolist() == [2]  # means 0.5, 0.45, 0.6
    assert np.allclose(result.scores, [0.5, 0.45, 0.6])


def test_missing_or_nan_feature_is_named_in_the_error():
    pool = pool_of(grad_norm=np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match="grad_norm"):
        TopScoreSelector(["grad_norm"]).select(pool, 1, seed=0)
    with pytest.raises(KeyError, match="el2n"):
        TopScoreSelector(["el2n"]).select(pool, 1, seed=0)


# --- CCS ---------------------------------------------------------------------------------------------------------

CCS_SCORES = np.array([0.0, 1.1, 1.2, 2.1, 2.2, 2.3] + [3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 4.0]
                      + [100.0, 200.0])  # strata over [0, 4] of width 1 hold 1, 2, 3, 10 samples; two outliers


# corrected: edges 0, 1, 2, 3, 4 (4.0 in the last stratum): sizes 1, 2, 3, 10.
# official: the top edge is 4·1.0001, so the edges are k·1.0001 and 3.0 falls in the third stratum: sizes 1, 2, 4, 9.
@pytest.mark.parametrize("variant, edges, budget, counts", [
    ("corrected", [1.0, 2.0, 3.0], 8, [1, 2, 2, 3]), ("corrected", [1.0, 2.0, 3.0], 14, [1, 2, 3, 8]),
    ("official", [1.0001, 2.0002, 3.0003], 8, [1, 2, 2, 3]), ("official", [1.0001, 2.0002, 3.0003], 14, [1, 2, 4, 7])])
def test_ccs_per_stratum_counts(variant, edges, budget, counts):
    ccs = CCSSelector(score="el2n", hard_fraction=0.12, drop_highest=True, n_strata=4,  # floor(0.12 * 18) = 2 cut
                      variant=variant)
    for seed in range(5):
        result = ccs.select(pool_of(el2n=CCS_SCORES), budget, seed=seed)
        picked = CCS_SCORES[result.indices]
        assert (picked < 100).all()  # the hard cutoff removed the two largest scores
        assert np.bincount(np.searchsorted(edges, picked, side="right"), minlength=4).tolist() == counts
        assert result.traces["per_stratum"] == counts


def test_ccs_official_loses_the_top_of_negative_scores_to_the_stretched_edge_and_still_meets_the_budget():
    s = np.array([-5.0, -4.0, -3.0, -2.0, -1.0])  # official top edge -1·1.0001 < -1: the maximum is in no stratum
    pool = pool_of(el2n=s)
    official = CCSSelector(score="el2n", hard_fraction=0.0, drop_highest=True, n_strata=2)
    assert 4 not in official.select(pool, 3, seed=0).indices.tolist()
    assert official.select(pool, 4, seed=0).indices.tolist() == [0, 1, 2, 3]
    tied = official.select(pool_of(el2n=np.array([-5.0, -1.0, -1.0])), 2, seed=0)  # both maxima outside: top-up
    assert len(tied.indices) == 2 and 0 in tied.indices.tolist() and tied.traces["per_stratum"] == [1, 0]
    corrected = CCSSelector(score="el2n", hard_fraction=0.0, drop_highest=True, n_strata=2, variant="corrected")
    assert any(4 in corrected.select(pool, 3, seed=seed).indices.tolist() for seed in range(10))


def test_ccs_can_cut_the_lowest_end_and_is_seeded():
    ccs = CCSSelector(score="el2n", hard_fraction=0.12, drop_highest=False, n_strata=4)  # official variant
    pool = pool_of(el2n=CCS_SCORES)
    result = ccs.select(pool, 8, seed=0)
    assert not {0, 1} & set(result.indices.tolist())  # 0.0 and 1.1 are the two lowest
    assert np.array_equal(result.indices, ccs.select(pool, 8, seed=0).indices)
    assert not np.array_equal(result.indices, ccs.select(pool, 8, seed=1).indices)


# --- D2 ------------------------------------------------------------------------------------------------------------

def test_d2_toy_graph_picks_the_expected_nodes_in_order():
    # Points on a line; with k=1 the symmetric kNN graph has edges 0-1 (d=1), 1-2 (1.5), 3-4 (1.5), 4-5 (8.5).
    x = np.array([[0.0], [1.0], [2.5], [10.0], [11.5], [20.0]], dtype=np.float32)
    s = np.array([1.0, 3.0, 1.0, 1.5, 2.0, 5.0])
    # Forward (sum): rho = s_i + sum_j e^{-d_ij} s_j = 2.104, 3.591, 1.669, 1.946, 2.336, 5.000.
    # Reverse (gamma=1): pick 5, then 1 (rho_0 -> 0.783, rho_2 -> 0.868), then 4 (rho_3 -> 1.425), 3, 2, 0.
    # Plain top-k of s would take 0 before 2; D2 prefers 2 because 0 sits closer to the picked node 1.
    nbr, dist = knn_graph(x, 1, block_size=4)
    indptr, cols, dists = symmetric_csr(nbr, dist)
    rho = forward_density(indptr, cols, dists, s, "sum")
    assert np.allclose(rho, [1 + 3 / np.e, 3 + 1 / np.e + np.exp(-1.5), 1 + 3 * np.exp(-1.5),
                             1.5 + 2 * np.exp(-1.5), 2 + 1.5 * np.exp(-1.5) + 5 * np.exp(-8.5), 5 + 2 * np.exp(-8.5)])
    assert reverse_message_passing(rho, indptr, cols, dists, 6, 1.0, "weighted").tolist() == [5, 1, 4, 3, 2, 0]
    d2 = D2Selector(score="el2n", embedding="text_emb", n_neighbors=1, gamma=1.0, graph_mode="sum",
                    sampling_mode="weighted", hard_fraction=0.0, drop_highest=True, block_size=4)
    assert d2.select(pool_of(el2n=s, text_emb=x), 5, seed=0).indices.tolist() == [1, 2, 3, 4, 5]


def test_knn_graph_matches_sklearn_across_ragged_blocks():
    x = np.random.default_rng(1).normal(size=(53, 6)).astype(np.float32)
    nbr, dist = knn_graph(x, 4, block_size=7)
    ref_dist, ref_nbr = NearestNeighbors(n_neighbors=5).fit(x).kneighbors(x)
    assert np.array_equal(nbr, ref_nbr[:, 1:])
    assert np.allclose(dist, ref_dist[:, 1:], atol=1e-5)


def dense_official_d2(x, s, k, gamma, graph_mode, sampling_mode, budget):
    """The reference algorithm with dense matrices and the min(rho) - 1 re-marking, written out independently."""
    d = cdist(x, x)
    adj = kneighbors_graph(x, k).toarray() > 0
    adj = adj | adj.T
    connect = np.where(adj, np.exp(-d) * np.maximum(s, 1e-7)[None, :], 0.0)
    rho = connect.sum(1) + s if graph_mode == "sum" else connect.sum(1) * s
    batch = []
    while len(batch) < budget:
        u = int(np.argmax(rho))
        nbrs = np.flatnonzero(connect[u] > 0)
        rho[nbrs] -= np.exp(-d[u, nbrs] * gamma) * rho[u] if sampling_mode == "weighted" else rho[u]
        batch.append(u)
        rho[batch] = rho.min() - 1
    assert len(set(batch)) == budget  # the re-marking never lets a node be picked twice
    return batch


@pytest.mark.parametrize("graph_mode, sampling_mode", [("sum", "weighted"), ("product", "absolute")])
def test_d2_matches_the_dense_reference(graph_mode, sampling_mode):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    s = rng.gamma(2.0, 0.5, 80)
    expected = dense_official_d2(x.astype(np.float64), s, 3, 0.5, graph_mode, sampling_mode, 25)
    nbr, dist = knn_graph(x, 3, block_size=16)
    indptr, cols, dists = symmetric_csr(nbr, dist)
    rho = forward_density(indptr, cols, dists, s, graph_mode)
    assert reverse_message_passing(rho, indptr, cols, dists, 25, 0.5, sampling_mode).tolist() == expected


# --- Moderate-DS ---------------------------------------------------------------------------------------------------

def test_moderate_picks_the_band_around_the_median_distance():
    x = np.array([0, 1, 3, 6, 10, 15, 21, 28, 36], dtype=np.float32)[:, None]
    # median embedding 10 -> distances 10, 9, 7, 4, 0, 5, 11, 18, 26; sorted 0 4 5 [7 9 10] 11 18 26
    result = ModerateSelector(embedding="text_emb").select(pool_of(text_emb=x), 3, seed=0)
    assert result.indices.tolist() == [0, 1, 2]
    assert np.allclose(result.scores, [10, 9, 7, 4, 0, 5, 11, 18, 26])


def test_moderate_uses_one_prototype_per_class():
    x = np.array([0, 1, 2, 3, 4, 10, 20, 30, 40, 50], dtype=np.float32)[:, None]
    labels = np.array([0] * 5 + [1] * 5)
    result = ModerateSelector(embedding="text_emb", per_class=True).select(pool_of(labels, text_emb=x), 2, seed=0)
    assert np.allclose(result.scores, [2, 1, 0, 1, 2, 20, 10, 0, 10, 20])  # class medians 2 and 30
    glob = ModerateSelector(embedding="text_emb", per_class=False).select(pool_of(labels, text_emb=x), 2, seed=0)
    assert np.allclose(glob.scores, np.abs(x[:, 0] - 7.0))  # global median (4 + 10) / 2


# --- k-Center ------------------------------------------------------------------------------------------------------

def brute_force_k_center(x, k, first):
    d = cdist(x, x)
    order, cover = [first], d[first].copy()
    for _ in range(k - 1):
        cover[order] = -1
        order.append(int(np.argmax(cover)))
        cover = np.minimum(cover, d[order[-1]])
    return order


def clustered(n_clusters=5, per=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (n_clusters, 8))
    return (np.repeat(centres, per, axis=0) + rng.normal(0, 0.1, (n_clusters * per, 8))).astype(np.float32)


def test_k_center_equals_brute_force_farthest_first():
    x = clustered()
    pool = pool_of(text_emb=x)
    result = KCenterSelector(embedding="text_emb", chunk_size=37).select(pool, 12, seed=4)
    first = int(np.random.default_rng(4).integers(len(x)))
    expected = brute_force_k_center(x.astype(np.float64), 12, first)
    assert result.indices.tolist() == sorted(expected)
    assert np.isclose(result.stats["radius"], cdist(x, x[expected]).min(1).max(), atol=1e-4)


def test_k_center_covering_radius_is_never_worse_than_random():
    x = clustered()
    pool = pool_of(text_emb=x)
    for seed in range(10):
        kc = KCenterSelector(embedding="text_emb", chunk_size=64).select(pool, 5, seed=seed)
        rnd = RandomSelector().select(pool, 5, seed=seed)
        r_kc = cdist(x, x[kc.indices]).min(1).max()
        assert r_kc <= cdist(x, x[rnd.indices]).min(1).max() + 1e-6
        assert len(set(np.repeat(np.arange(5), 40)[kc.indices])) == 5  # one centre per cluster


def test_k_center_never_repeats_a_centre_on_duplicates():
    x = np.zeros((6, 3), dtype=np.float32)
    x[3:] = 1.0
    result = KCenterSelector(embedding="text_emb", chunk_size=4).select(pool_of(text_emb=x), 4, seed=0)
    assert len(set(result.indices.tolist())) == 4
