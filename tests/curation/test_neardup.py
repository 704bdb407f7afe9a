"""Exact near-duplicate search: banded search vs brute force, group keys, clusters, representatives."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from curation.neardup import (
    SearchPlan,
    ball_size,
    band_keys,
    choose_representatives,
    clusters,
    find_pairs,
    item_band_keys,
    key_band,
    make_key,
    pair_distances,
    plan_search,
    verify_group,
)
from curation.phash import phash_many

KS = [0, 4, 6, 8, 10]


def brute_pairs(h: np.ndarray, k: int, query: np.ndarray | None = None) -> np.ndarray:
    """All pairs i < j within k from the full distance matrix (sorted, like find_pairs)."""
    n = h.size
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= k, 1))
    pairs = np.stack([i, j], axis=1).astype(np.int64).reshape(-1, 2)
    if query is not None:
        pairs = pairs[query[pairs[:, 0]] | query[pairs[:, 1]]]
    assert n < 2 or np.all(np.diff(pairs[:, 0]) >= 0)
    return pairs


def planted_hashes(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform hashes with pairs planted at each distance 0..k+2 and one exact-duplicate triple."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    free = n - 3 if n >= 3 else n  # the last three items become exact duplicates
    per = max(1, n // (4 * (k + 3)))
    take = min(2 * per * (k + 3), free - free % 2)
    items = rng.permutation(free)[:take].reshape(-1, 2)
    dist = np.repeat(np.arange(k + 3), per)[: len(items)]
    for (a, b), d in zip(items, dist):
        bits = rng.choice(64, size=int(d), replace=False)
        h[b] = h[a] ^ np.uint64(sum(1 << int(x) for x in bits))
    if n >= 3:
        h[-3:] = h[-1]
    return h, np.sort(items, axis=1), dist


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", [0, 1, 2, 257, 2500])
def test_find_pairs_equals_brute_force(n: int, k: int) -> None:
    h, planted, dist = planted_hashes(n, k, seed=n * 31 + k)
    expected = brute_pairs(h, k)
    pairs, d = find_pairs(h, k, return_distances=True)
    assert pairs.dtype == np.int64 and pairs.shape == expected.shape
    assert np.array_equal(pairs, expected)
    assert np.array_equal(d, np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]))
    assert np.array_equal(pair_distances(h, pairs), d)
    found = set(map(tuple, pairs.tolist()))
    for (a, b), dd in zip(planted.tolist(), dist.tolist()):
        assert ((a, b) in found) == (dd <= k)


def _plans(n: int, k: int) -> list[SearchPlan]:
    return [
        plan_search(n, k),
        plan_search(10**6, k),  # wide bands: sparse buckets, binary-search lookups at this n
        plan_search(10**4, k),
        plan_search(n, k, min_bands=k + 1),  # classic k+1 exact bands
        plan_search(n, k, max_bands=2),  # two 32-bit bands, large radii
        SearchPlan(k, ((0, 0),), (0,)),  # all pairs
        plan_search(10**6, k + 2),  # a plan for a larger k is exact for k too
    ]


@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_every_plan_is_exact(k: int) -> None:
    h, _, _ = planted_hashes(1500, k, seed=100 + k)
    expected = brute_pairs(h, k)
    for plan in _plans(h.size, k):
        if plan.all_pairs or plan.radius <= 4:
            assert np.array_equal(find_pairs(h, k, plan=plan), expected), plan.describe()


def test_small_chunks_and_large_buckets() -> None:
    # 8-bit bands: buckets of ~40 items; chunk=97 forces many chunks of the probe loop
    rng = np.random.default_rng(5)
    h = rng.integers(0, 2**64, size=3000, dtype=np.uint64, endpoint=False)
    h[1::7] = h[::7][: len(h[1::7])] ^ np.uint64(0b1011)
    plan = SearchPlan(9, tuple((8 * i, 8) for i in range(8)), (1, 1, 1, 0, 0, 0, 0, 0))
    assert np.array_equal(find_pairs(h, 9, plan=plan, chunk=97), brute_pairs(h, 9))


def test_duplicates_and_edge_inputs() -> None:
    h = np.array([7, 7, 7, 2**63, 2**63 + 1], dtype=np.uint64)
    assert find_pairs(h, 0).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert find_pairs(h, 1).tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]
    assert find_pairs(h.view(np.int64), 1).tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]  # bit patterns
    assert find_pairs(np.array([1, 2, 3]), 2).tolist() == [[0, 1], [0, 2], [1, 2]]  # small ints
    assert find_pairs([2**64 - 1, 5, 2**64 - 2], 1).tolist() == [[0, 2]]  # python ints >= 2**63
    assert find_pairs(np.array([-1, 5, -2], dtype=np.int64), 1).tolist() == [[0, 2]]  # same bits
    assert find_pairs(np.array([], dtype=np.uint64), 4).shape == (0, 2)
    assert find_pairs(np.array([5], dtype=np.uint64), 4).shape == (0, 2)
    pairs, d = find_pairs(np.array([5], dtype=np.uint64), 4, return_distances=True)
    assert d.shape == (0,)
    assert len(find_pairs(np.zeros(50, dtype=np.uint64), 64)) == 50 * 49 // 2
    with pytest.raises(ValueError, match="k="):
        find_pairs(h, 6, plan=plan_search(10, 4))
    with pytest.raises(ValueError):
        find_pairs(h, -1)
    with pytest.raises(ValueError):
        find_pairs(h, 2, query_mask=np.ones(3, dtype=bool))


@pytest.mark.parametrize("k", [4, 10])
@pytest.mark.parametrize("frac", [0.0, 0.02, 0.3, 0.8, 1.0])
def test_query_mask(k: int, frac: float) -> None:
    h, _, _ = planted_hashes(2000, k, seed=7 + k)
    rng = np.random.default_rng(int(frac * 100))
    query = rng.random(h.size) < frac
    expected = brute_pairs(h, k, query)
    pairs, d = find_pairs(h, k, query_mask=query, return_distances=True)
    assert np.array_equal(pairs, expected)
    assert np.array_equal(d, pair_distances(h, pairs))
    assert np.all(query[pairs[:, 0]] | query[pairs[:, 1]])
    for plan in (plan_search(10**6, k), plan_search(10**6, k, n_queries=10)):
        assert np.array_equal(find_pairs(h, k, plan=plan, query_mask=query), expected)


def test_query_mask_never_pairs_reference_among_itself() -> None:
    # reference 0, 1 are duplicates of each other (handled when they were accepted); query 2 is near 0
    h = np.array([0b0, 0b0, 0b11, 2**40 - 1], dtype=np.uint64)
    query = np.array([False, False, True, False])
    assert find_pairs(h, 2, query_mask=query).tolist() == [[0, 2], [1, 2]]
    assert find_pairs(h, 2).tolist() == [[0, 1], [0, 2], [1, 2]]


@pytest.mark.parametrize("n", [1, 10**3, 10**5, 10**6, 10**7, 10**8])
@pytest.mark.parametrize("k", KS + [12, 20])
def test_plan_covers_distance_k(n: int, k: int) -> None:
    plan = plan_search(n, k)
    if plan.all_pairs:
        return
    m = len(plan.bands)
    assert sum(w for _, w in plan.bands) == 64
    assert [s for s, _ in plan.bands] == list(np.cumsum([0] + [w for _, w in plan.bands])[:-1])
    assert sum(plan.radii) >= k - m + 1  # generalised pigeonhole
    assert plan.est_candidates >= 0 and plan.est_seconds > 0


def test_plan_choices_and_estimates() -> None:
    assert plan_search(100, 10).all_pairs  # tiny input: one bucket
    big = plan_search(10**6, 10)
    assert len(big.bands) < 11 and big.radius >= 1  # wider bands with radius beat k+1 exact bands
    classic = plan_search(10**6, 10, min_bands=11)
    assert classic.radii == (0,) * 11 and big.est_seconds < classic.est_seconds
    # candidates ~ n * sum_b V(w_b, t_b) * n / 2**w_b / 2 (each pair probed from one side)
    plan = plan_search(10**6, 10, min_bands=4, max_bands=4)
    assert len(plan.bands) == 4 and sum(plan.radii) == 7 and all(13 <= w <= 19 for _, w in plan.bands)
    expected = sum(1e6 * ball_size(w, t) * (1e6 - 1) / 2**w / 2 for (_, w), t in zip(plan.bands, plan.radii))
    assert plan.est_candidates == pytest.approx(expected)
    assert ball_size(16, 2) == 1 + 16 + 120 and ball_size(3, 5) == 8
    # a shuffle-bound (Beam) cost weighting trades probe keys for candidates
    beam = plan_search(10**6, 10, probe_weight=100)
    assert beam.est_probes < big.est_probes / 4 and beam.est_candidates > big.est_candidates
    with pytest.raises(ValueError, match="radii"):
        SearchPlan(10, ((0, 32), (32, 32)), (4, 4))  # 4 + 4 < 10 - 2 + 1
    with pytest.raises(ValueError, match="contiguous"):
        SearchPlan(0, ((0, 32), (31, 33)), (0, 0))


def _group_by_key(h: np.ndarray, plan: SearchPlan, query: np.ndarray | None) -> dict[int, dict[str, list[int]]]:
    """What a Beam GroupByKey over band_keys produces: key -> home items, probe items."""
    keys = band_keys(h, plan, query_mask=query)
    groups: dict[int, dict[str, list[int]]] = defaultdict(lambda: {"home": [], "probe": []})
    for i, row in enumerate(keys.home.tolist()):
        for key in row:
            groups[key]["home"].append(i)
    for i, key in zip(keys.probe_item.tolist(), keys.probe_key.tolist()):
        groups[key]["probe"].append(i)
    return groups


@pytest.mark.parametrize("k,plan_n", [(4, 10**5), (8, 10**5), (10, 10**6), (3, 10**3)])
@pytest.mark.parametrize("mode", ["symmetric", "query"])
def test_band_keys_and_verify_group_give_each_pair_once(k: int, plan_n: int, mode: str) -> None:
    h, _, _ = planted_hashes(600, k, seed=k)
    plan = plan_search(plan_n, k)
    query = np.random.default_rng(k).random(h.size) < 0.25 if mode == "query" else None
    ids = [f"r{i:05d}" for i in range(h.size)]  # string record ids, ordered like the indices
    out = []
    for key, g in _group_by_key(h, plan, query).items():
        hq = None if query is None else query[g["home"]]
        out += verify_group(
            key, [ids[i] for i in g["home"]], h[g["home"]], [ids[i] for i in g["probe"]], h[g["probe"]], plan, k, hq
        )
    assert len(out) == len(set(out))  # first-qualifying-band rule: no pair twice
    got = sorted((int(a[1:]), int(b[1:]), d) for a, b, d in out)
    pairs, d = find_pairs(h, k, query_mask=query, return_distances=True)
    assert got == [(a, b, int(x)) for (a, b), x in zip(pairs.tolist(), d.tolist())]
    assert np.array_equal(pairs, brute_pairs(h, k, query))


def test_item_band_keys_match_band_keys() -> None:
    h, _, _ = planted_hashes(300, 8, seed=3)
    plan = plan_search(10**5, 8)
    sym = band_keys(h, plan)
    query = np.arange(h.size) % 3 == 0
    qk = band_keys(h, plan, query_mask=query)
    for i in (0, 1, 2, 150):
        homes, probes = item_band_keys(int(h[i]), plan)
        assert homes == sym.home[i].tolist()
        assert sorted(probes) == sorted(sym.probe_key[sym.probe_item == i].tolist())
        homes_q, probes_q = item_band_keys(int(h[i]), plan, query=bool(query[i]))
        assert homes_q == homes
        assert sorted(probes_q) == sorted(qk.probe_key[qk.probe_item == i].tolist())
    assert item_band_keys(int(h[1]), plan, query=False)[1] == []
    # symmetric probes are the upper half of the ball; query probes the full ball
    per_item = sum((ball_size(w, t) - 1) for (_, w), t in zip(plan.bands, plan.radii))
    assert len(item_band_keys(int(h[0]), plan, query=True)[1]) == per_item
    assert sym.probe_key.size == pytest.approx(h.size * per_item / 2, rel=0.05)
    assert key_band(make_key(3, 12345)) == 3 and make_key(3, 12345) & 0xFFFFFFFF == 12345


def test_verify_group_rules() -> None:
    plan = SearchPlan(4, ((0, 32), (32, 32)), (2, 1))
    a = 0x0000_00F0_0000_0000  # band 0 value 0, band 1 value 0xF0
    b = a ^ 0b1  # differs in band 0 only (1 bit): belongs to band 0
    c = a ^ (0b11 << 32) ^ 0b111  # 5 bits away from a: beyond k
    key1 = make_key(1, 0xF0)
    # a and b share band-1 value 0xF0, but their first qualifying band is 0: not reported in band 1
    assert verify_group(key1, ["a", "b", "c"], np.array([a, b, c], np.uint64), [], np.array([], np.uint64), plan) == []
    key0 = make_key(0, 0)
    assert verify_group(key0, ["a"], np.array([a], np.uint64), ["b"], np.array([b], np.uint64), plan) == [("a", "b", 1)]
    # query mode: two reference homes never pair; a query-query pair is kept from its smaller probe id
    assert verify_group(key0, ["a", "x"], np.array([a, a], np.uint64), [], np.array([], np.uint64), plan,
                        home_query=np.array([False, False])) == []
    assert verify_group(key0, ["b"], np.array([b], np.uint64), ["a"], np.array([a], np.uint64), plan,
                        home_query=np.array([True])) == [("a", "b", 1)]
    assert verify_group(key0, ["a"], np.array([a], np.uint64), ["b"], np.array([b], np.uint64), plan,
                        home_query=np.array([True])) == []


def test_clusters_exact() -> None:
    pairs = np.array([[3, 7], [7, 9], [1, 2], [5, 5], [9, 4]])
    assert clusters(10, pairs).tolist() == [0, 1, 1, 3, 3, 5, 6, 3, 8, 3]
    assert clusters(4, np.empty((0, 2))).tolist() == [0, 1, 2, 3]
    assert clusters(0, np.empty((0, 2))).tolist() == []
    chain = np.stack([np.arange(999, 0, -1), np.arange(998, -1, -1)], axis=1)  # a long path
    assert np.all(clusters(1000, chain) == 0)


def test_choose_representatives_rule() -> None:
    labels = np.array([0, 0, 0, 0, 4, 4, 6, 4])
    width = np.array([100, 200, 100, 200, 50, 50, 10, 50])
    height = np.array([100, 100, 200, 100, 50, 50, 10, 50])
    captions = np.array([90, 10, 20, 10, 5, 30, 0, 30])
    ids = np.array(["d", "c", "b", "a", "x", "z", "q", "y"])
    rep, keep = choose_representatives(labels, width, height, captions, ids)
    # cluster 0: areas 1e4, 2e4, 2e4, 2e4 -> captions 10, 20, 10 -> item 2 (longest caption)
    # cluster 4: equal areas, captions 5, 30, 30 -> ids 'z' vs 'y' -> item 7
    assert rep.tolist() == [2, 2, 2, 2, 7, 7, 6, 7]
    assert keep.tolist() == [False, False, True, False, False, False, True, True]
    # without captions: the largest area ties (1, 2, 3) go to the smallest record id 'a'
    rep, _ = choose_representatives(labels, width, height, record_ids=ids)
    assert rep[:4].tolist() == [3, 3, 3, 3]
    # no priority at all: smallest index
    assert choose_representatives(labels)[0].tolist() == [0, 0, 0, 0, 4, 4, 6, 4]
    # locked (accepted reference) members win and always stay kept
    locked = np.array([True, False, False, True, False, False, False, False])
    rep, keep = choose_representatives(labels, width, height, captions, ids, locked=locked)
    assert rep.tolist() == [3, 3, 3, 3, 7, 7, 6, 7]  # 3 beats 0 (larger area) among locked
    assert keep.tolist() == [True, False, False, True, False, False, True, True]
    rep, keep = choose_representatives(np.empty(0, np.int64))
    assert rep.size == 0 and keep.size == 0


def test_real_near_dup_hashes(shared_data) -> None:
    """pHashes of the real near-dup groups: exact against brute force; clusters stay inside groups."""
    nd = shared_data / "near_dup"
    paths, group, md5 = [], [], []
    for line in (nd / "derived_coco_mini/groups.jsonl").read_text().splitlines():
        g = json.loads(line)
        for p in [g["original"], *g["variants"].values()]:
            paths.append(nd / "derived_coco_mini" / p)
            group.append(g["group"])
            md5.append(None)
    for g in json.loads((nd / "groups_real.json").read_text()):
        for m in g["members"]:
            paths.append(nd / m["path"])
            group.append(g["group"])
            md5.append(m["md5_12"])
    hashes, errors = phash_many([p.read_bytes() for p in paths])
    ok = np.array([e is None for e in errors])
    assert ok.sum() == len(paths) - 1  # one member is random bytes (unknown format)
    h, group = hashes[ok], np.array(group)[ok]
    md5 = [m for m, good in zip(md5, ok.tolist()) if good]
    for k in (0, 4, 10):
        pairs = find_pairs(h, k)
        assert np.array_equal(pairs, brute_pairs(h, k))
        labels = clusters(h.size, pairs)
        assert len(pairs) > 0 and np.all(labels[pairs[:, 0]] == labels[pairs[:, 1]])
        # no cross-group pair within k=10 in this data: every cluster lies inside one group
        assert np.all(group[pairs[:, 0]] == group[pairs[:, 1]])
        assert len(np.unique(labels)) >= len(set(group.tolist()))
    # byte-identical files (same md5) always pair at k = 0
    same_bytes = {(i, j) for i in range(h.size) for j in range(i + 1, h.size) if md5[i] and md5[i] == md5[j]}
    assert same_bytes and same_bytes <= set(map(tuple, find_pairs(h, 0).tolist()))
