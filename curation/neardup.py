"""Exact near-duplicate search over 64-bit perceptual hashes (Hamming distance <= k), never O(n^2).

The search is multi-index hashing with the generalised pigeonhole principle: cut the 64 bits into m
contiguous bands and give band b a probe radius t_b. If every band differed in more than t_b bits,
the distance would be at least sum(t_b + 1) = sum(t_b) + m; so when

    sum(t_b) >= k - m + 1                                                     (covering condition)

every pair within distance k differs in at most t_b bits in at least one band b. With m = k + 1
bands all radii are 0 (the classic "k + 1 bands, one agrees exactly"); fewer, wider bands with
radii 1..3 probe more bucket values but meet far fewer random items per bucket, which is what makes
k = 10 cheap at a million hashes. ``plan_search`` picks (m, widths, radii) with a cost model.

In memory (``find_pairs``), each band sorts the items by band value and finds a bucket by a
2**width offset table (or binary search); probing rows are grouped by target bucket size c and
verified as dense (rows, c) blocks read through a sliding-window view of the sorted hashes, with
``np.bitwise_count`` of the XOR: no per-candidate index arrays, working memory in small blocks.

Candidates come from buckets: items are sorted by band value; an item meets the items whose band value
equals its own ("home" bucket) or lies within t_b bits of it ("probe" buckets). Every candidate is
verified by popcount of the XOR, so the result is exactly the set of pairs within k (recall and
precision 1.0 by construction). Each pair is reported once: by the first band (lowest index) in
which it differs in <= t_b bits, and inside that band from the side with the smaller band value.

Key scheme for a distributed GroupByKey (see ``band_keys`` and ``verify_group``)::

    key(b, v) = (b << 32) | v             band index b, band value v (widths are <= 32 bits)
    home key  : every item emits key(b, v_b) for each band b (its own band values)
    probe keys: for each band b with radius t_b > 0, every item emits key(b, v_b ^ mask) for each mask
                of 1..t_b bits whose highest set bit is 0 in v_b (so v_b ^ mask > v_b: the pair
                is probed from its lower side only, once)
    group     : all items whose home key or probe key is key(b, v); candidates are home x home
                (same band value) and probe x home (never probe x probe); ``verify_group`` checks
                them and keeps a pair only in its first qualifying band, so the union of all groups'
                outputs has each pair exactly once (no Distinct needed).

    query mode (``query_mask``): only query items probe, over the full ball (all masks, both
    directions); reference items emit home keys only; pairs of two reference items are never made.

Clusters are connected components of the pair graph; ``choose_representatives`` keeps one member per
cluster by a documented rule (locked members first, then largest pixel area, then longest caption,
then smallest record id).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

HASH_BITS = 64
MAX_BAND_BITS = 32  # keys pack (band, value) into one int64
TABLE_BITS = 24  # widths up to this use a direct count/offset table; wider bands use searchsorted
_BLOCK = 1 << 15  # candidate block (elements): small enough that its temporaries stay in L2 cache

# Cost model constants (seconds), measured with numpy 2.3 on one AMD EPYC core (bench/bench_neardup.py
# setting); only their ratios matter for choosing a plan. A probe is one bucket lookup, a row is a
# probe that meets a non-empty bucket (a block row to gather), a candidate is one verified pair.
COST_PROBE_TABLE = 1.0e-8
COST_PROBE_SEARCH = 4.5e-8
COST_ROW = 2e-8
COST_CANDIDATE = 4e-9
COST_DENSE_PAIR = 5e-9  # one pair of the all-pairs (single bucket) plan
COST_MASK = 3e-5  # python/numpy overhead per (band, mask, chunk)
COST_BAND = 1.5e-7  # per item and band: band values, sort
COST_TABLE_ENTRY = 1e-8  # per entry of a band's 2**width count/offset table


def _use_table(width: int, probes: float) -> bool:
    """Direct 2**width table when it fits and costs less to build than binary searches save."""
    return width <= TABLE_BITS and 2.0**width * COST_TABLE_ENTRY < probes * (COST_PROBE_SEARCH - COST_PROBE_TABLE)


def ball_size(width: int, radius: int) -> int:
    """Number of values within ``radius`` bits of a ``width``-bit value: sum_i C(width, i)."""
    return sum(math.comb(width, i) for i in range(min(radius, width) + 1))


@lru_cache(maxsize=256)
def _masks(width: int, radius: int) -> np.ndarray:
    """All masks of 1..radius bits inside a width-bit band, as int64, sorted."""
    out = [
        sum(1 << b for b in bits)
        for r in range(1, min(radius, width) + 1)
        for bits in itertools.combinations(range(width), r)
    ]
    arr = np.array(sorted(out), dtype=np.int64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class SearchPlan:
    """How to search: bands as (shift, width) over the 64 bits, a probe radius per band, estimates.

    A plan made for distance ``k`` is exact for any distance <= k. The single band (0, 0) is the
    all-pairs plan (one bucket), which the cost model picks for tiny inputs. ``est_probes`` (bucket
    lookups, i.e. probe keys), ``est_candidates`` (pairs verified) and ``est_seconds`` (modelled
    in-memory time, probe part scaled by ``probe_weight``) come from ``plan_search``.
    """

    k: int
    bands: tuple[tuple[int, int], ...]
    radii: tuple[int, ...]
    est_probes: float = 0.0
    est_candidates: float = 0.0
    est_seconds: float = 0.0

    def __post_init__(self) -> None:
        if len(self.bands) != len(self.radii) or not self.bands:
            raise ValueError("a plan needs one radius per band and at least one band")
        if self.bands == ((0, 0),):
            return
        covered = 0
        for shift, width in self.bands:
            if shift != covered or not 0 < width <= MAX_BAND_BITS:
                raise ValueError(f"bands must be contiguous, 1..{MAX_BAND_BITS} bits, from bit 0")
            covered += width
        if covered != HASH_BITS:
            raise ValueError("bands must cover all 64 bits")
        if sum(self.radii) < self.k - len(self.bands) + 1:
            raise ValueError("radii do not cover distance k: need sum(radii) >= k - m + 1")

    @property
    def radius(self) -> int:
        """Largest probe radius of the plan."""
        return max(self.radii)

    @property
    def all_pairs(self) -> bool:
        return self.bands == ((0, 0),)

    def describe(self) -> str:
        """Short human form: band widths in bits and radii, e.g. 'bits 17,17,17,13 r 2,2,2,1'."""
        if self.all_pairs:
            return "all pairs"
        return f"bits {','.join(str(w) for _, w in self.bands)} r {','.join(map(str, self.radii))}"


MAX_RADIUS = 5  # V(32, 5) is already 2.4e5 probes per item: larger radii never pay


def _band_estimate(
    n: int, w: int, t: int, n_queries: int | None, probe_weight: float = 1.0
) -> tuple[float, float, float]:
    """(probes, candidates, seconds) of one band of width ``w`` and radius ``t``."""
    lam = max(n - 1, 0) / 2.0**w  # expected other items in a bucket
    v = ball_size(w, t)
    if n_queries is None:
        p, c = n * (v - 1) / 2.0, n * lam * v / 2.0  # half ball: each pair probed from one side
        rows = (p + n) * -math.expm1(-lam)
    else:
        p, c = n_queries * v, n_queries * lam * v
        rows = p * -math.expm1(-lam)
    chunks = max(1, math.ceil(n / (1 << 20)))
    table = _use_table(w, p + n)
    lookup = p * COST_PROBE_TABLE + 2.0**w * COST_TABLE_ENTRY if table else p * COST_PROBE_SEARCH
    probe_s = (lookup + rows * COST_ROW) * probe_weight
    return p, c, probe_s + c * COST_CANDIDATE + v * chunks * COST_MASK + n * COST_BAND


def _estimate(
    n: int, widths: list[int], radii: list[int], n_queries: int | None, probe_weight: float = 1.0
) -> tuple[float, float, float]:
    """(probes, candidates, seconds) of a banded plan under the cost model."""
    parts = [_band_estimate(n, w, t, n_queries, probe_weight) for w, t in zip(widths, radii)]
    return tuple(float(sum(x)) for x in zip(*parts))  # type: ignore[return-value]


def _partitions(total: int, parts: int, cap: int, floor: int | None = None) -> list[tuple[int, ...]]:
    """Non-increasing tuples of ``parts`` radii in 0..cap summing to ``total``, spread at most 2
    (uneven spreads only add probes; the bound keeps the enumeration small for large k)."""
    if parts == 0:
        return [()] if total == 0 else []
    if total > parts * cap or (floor is not None and total < parts * floor):
        return []
    if total == 0:
        return [(0,) * parts]
    out = []
    for first in range(min(cap, total), -1, -1):
        lo = max(0, first - 2) if floor is None else floor
        out += [(first, *rest) for rest in _partitions(total - first, parts - 1, first, lo)]
    return out


def _best_widths(radii: tuple[int, ...], cost: np.ndarray) -> tuple[list[int], float]:
    """Band widths (1..32, summing to 64) minimising sum_b cost[t_b, w_b]: a small exact DP."""
    s_idx = np.arange(HASH_BITS + 1)[:, None]
    w_idx = np.arange(1, MAX_BAND_BITS + 1)[None, :]
    prev = s_idx - w_idx  # bits used before this band
    dp = np.full(HASH_BITS + 1, np.inf)
    dp[0] = 0.0
    choice = []
    for t in radii:
        vals = np.where(prev >= 0, dp[np.clip(prev, 0, None)] + cost[t, w_idx], np.inf)
        choice.append(vals.argmin(axis=1) + 1)
        dp = vals.min(axis=1)
    widths, s = [], HASH_BITS
    for ch in reversed(choice):
        w = int(ch[s])
        widths.append(w)
        s -= w
    return widths[::-1], float(dp[HASH_BITS])


def plan_search(
    n: int,
    k: int,
    n_queries: int | None = None,
    *,
    min_bands: int = 2,
    max_bands: int | None = None,
    probe_weight: float = 1.0,
) -> SearchPlan:
    """Cheapest exact plan for ``n`` hashes at distance ``k`` under the cost model.

    For m = 2 .. k+1 bands it tries every way to spread the radius total T = max(0, k - m + 1)
    over the bands (radii <= MAX_RADIUS) and, for each, the band widths that minimise the
    estimated time (exact DP over widths 1..32). Estimates per band of width w and radius t, with
    V = ball_size(w, t) and lambda = n / 2**w items per bucket: probes ~ n * (V - 1) / 2 bucket
    lookups and candidates ~ n * V * lambda / 2 pairs to verify (halved: each pair is probed from
    one side), i.e. ``candidates ~ n * sum_b V(w_b, t_b) * n / 2**w_b / 2``; ``n_queries``
    estimates the asymmetric query mode (q * V probes, q * V * lambda candidates) instead. The
    all-pairs plan competes too, so tiny inputs get one bucket.

    ``probe_weight`` scales the cost of probes relative to candidates: 1 for ``find_pairs``;
    a distributed GroupByKey pays a shuffled record per probe key, so a Beam run may want ~100
    (fewer probe keys, bigger groups). ``min_bands``/``max_bands`` restrict m.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    n = max(int(n), 0)
    pairs_all = n * (n - 1) / 2.0 if n_queries is None else float(n_queries) * n
    best = SearchPlan(k, ((0, 0),), (0,), 0.0, pairs_all, pairs_all * COST_DENSE_PAIR)
    cost = np.full((MAX_RADIUS + 1, MAX_BAND_BITS + 1), np.inf)
    for t in range(MAX_RADIUS + 1):
        for w in range(1, MAX_BAND_BITS + 1):
            cost[t, w] = _band_estimate(n, w, t, n_queries, probe_weight)[2]
    # more than 24 bands (under 3 bits each) never pays; for k >= 64 every pair qualifies
    hi = min(k + 1, 24) if max_bands is None else min(max_bands, HASH_BITS)
    for m in range(max(min_bands, 2), max(hi, 2) + 1 if k < HASH_BITS else 0):
        for radii in _partitions(max(0, k - m + 1), m, MAX_RADIUS):
            widths, secs = _best_widths(radii, cost)
            if secs < best.est_seconds:
                probes, cands, _ = _estimate(n, widths, list(radii), n_queries, probe_weight)
                bands = tuple(zip(np.cumsum([0, *widths[:-1]]).tolist(), widths))
                best = SearchPlan(k, bands, radii, probes, cands, secs)
    return best


def _as_hashes(hashes) -> np.ndarray:  # noqa: ANN001
    """A 1-D uint64 view or copy: uint64 as is, int64 as its bit pattern (parquet has no uint64
    in some writers), non-negative ints widened, and Python ints (lists, object arrays) masked to 64
    bits. numpy would turn a list holding ints >= 2**63 into float64, so lists never go through it.
    """
    if not isinstance(hashes, np.ndarray) or hashes.dtype == object:
        return np.array([int(x) & 0xFFFF_FFFF_FFFF_FFFF for x in hashes], dtype=np.uint64)
    if hashes.ndim != 1:
        raise ValueError("hashes must be a 1-D array")
    if hashes.dtype == np.uint64:
        return hashes
    if hashes.dtype == np.int64:
        return hashes.view(np.uint64)
    if hashes.size == 0:
        return hashes.astype(np.uint64)
    if np.issubdtype(hashes.dtype, np.integer) and hashes.min() >= 0:
        return hashes.astype(np.uint64)
    raise TypeError(f"hashes must be uint64 (or int64 bit patterns), got {hashes.dtype}")


def band_values(hashes: np.ndarray, band: tuple[int, int]) -> np.ndarray:
    """Values of one band (shift, width) of each hash, as int64."""
    shift, width = band
    h = _as_hashes(hashes)
    if width == 0:
        return np.zeros(h.shape, dtype=np.int64)
    return ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


def pair_distances(hashes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Hamming distance of each (i, j) row of ``pairs``, as uint8."""
    h = _as_hashes(hashes)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.bitwise_count(h[pairs[:, 0]] ^ h[pairs[:, 1]]).astype(np.uint8)


def _earlier_band_hit(x: np.ndarray, plan: SearchPlan, b: int) -> np.ndarray:
    """True where XOR ``x`` differs in <= t bits in a band before ``b`` (pair belongs to that band)."""
    out = np.zeros(x.shape, dtype=bool)
    for (shift, width), t in zip(plan.bands[:b], plan.radii[:b]):
        bd = np.bitwise_count((x >> np.uint64(shift)) & np.uint64((1 << width) - 1))
        out |= bd <= t
    return out


# ----------------------------------------------------------------------------------------------
# In-memory search


class _Band:
    """Items of one band sorted by band value, with O(1) (table) or O(log n) bucket lookup."""

    def __init__(self, h: np.ndarray, band: tuple[int, int], table: bool) -> None:
        width = band[1]
        # values and positions stay intp: numpy casts any other index dtype on every gather
        bv = band_values(h, band)
        self.order = np.argsort(bv, kind="stable")
        self.sbv = bv[self.order]
        self.sh = h[self.order]
        self.table = table and width <= TABLE_BITS
        if self.table:
            cnt = np.bincount(bv, minlength=1 << width)
            self.cnt = cnt.astype(np.int32)
            self.off = np.zeros(cnt.size, dtype=np.int64)
            np.cumsum(cnt[:-1], out=self.off[1:])
        else:
            self.uval, ustart, ucnt = np.unique(self.sbv, return_index=True, return_counts=True)
            self.ustart, self.ucnt = ustart.astype(np.int64), ucnt.astype(np.int32)

    def counts(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Bucket size of each value, plus (search mode) the index into the unique values."""
        if self.table:
            return self.cnt[values], None
        i = np.searchsorted(self.uval, values)
        np.minimum(i, self.uval.size - 1, out=i)
        return np.where(self.uval[i] == values, self.ucnt[i], 0), i

    def starts(self, values: np.ndarray, where: np.ndarray | None) -> np.ndarray:
        return self.off[values] if self.table else self.ustart[where]


_EMPTY = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8))


def _probe(
    bd: _Band, src: np.ndarray, vs: np.ndarray, hs: np.ndarray, mask: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verify items (sorted positions ``src``, band values ``vs``, hashes ``hs``) against the
    bucket of ``vs ^ mask``; return hits as (source position, target position, distance)."""
    tv = vs ^ vs.dtype.type(mask) if mask else vs
    cnt, where = bd.counts(tv)
    nnz = np.count_nonzero(cnt)
    if nnz == 0:
        return _EMPTY
    if nnz < 0.75 * cnt.size:  # sparse buckets (wide bands): drop empty probes early
        nz = np.flatnonzero(cnt != 0)  # a bool mask: flatnonzero of ints is 5x slower
        cnt, tv, src, hs = cnt[nz], tv[nz], src[nz], hs[nz]
        where = None if where is None else where[nz]
    start = bd.starts(tv, where)
    return _verify_ranges(bd.sh, src, hs, start, cnt, k)


def _verify_ranges(
    sh: np.ndarray, src: np.ndarray, hs: np.ndarray, start: np.ndarray, cnt: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verify src items against the sorted ranges sh[start : start + cnt]; return hits.

    Rows are grouped by range length c so that each group is one dense (rows, c) block read from a
    sliding-window view of the sorted hashes: contiguous reads, no per-candidate index arrays.
    Returns (source position, target position, distance).
    """
    cmax = int(cnt.max()) if cnt.size else 0
    if cmax == 0:
        return _EMPTY
    if cmax <= 8:  # few lengths: one selection pass per length beats a sort
        sels = [np.flatnonzero(cnt == c) for c in range(1, cmax + 1)]
        groups = [(c, src[sel], hs[sel], start[sel]) for c, sel in zip(range(1, cmax + 1), sels) if sel.size]
    else:
        # stable: within one length the rows keep their order, so their target ranges stay nearly
        # ascending (measured faster than sorting by (length, start) with a quicksort)
        o = np.argsort(cnt.astype(np.uint16) if cmax < 1 << 16 else cnt, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(cnt)))).tolist()
        # permute once so that every block below is a contiguous slice
        src, hs, start = src[o], hs[o], start[o]
        groups = [
            (c, src[a:z], hs[a:z], start[a:z])
            for c, a, z in zip(range(1, cmax + 1), bounds[1:], bounds[2:])
            if z > a
        ]
    kk = np.uint8(min(k, 255))
    out_s, out_t, out_d = [], [], []
    for c, g_src, g_hs, g_start in groups:
        win = sliding_window_view(sh, c)
        step = max(1, _BLOCK // c)
        for lo in range(0, g_src.size, step):
            st = g_start[lo : lo + step]
            blk = win[st]
            blk ^= g_hs[lo : lo + step, None]
            pc = np.bitwise_count(blk)
            hit = pc <= kk
            if hit.any():
                r, col = np.nonzero(hit)
                out_s.append(g_src[lo : lo + step][r])
                out_t.append(st[r] + col)
                out_d.append(pc[r, col])
    if not out_s:
        return _EMPTY
    return (
        np.concatenate(out_s).astype(np.int64),
        np.concatenate(out_t).astype(np.int64),
        np.concatenate(out_d),
    )


def _self_bucket(bd: _Band, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs p < q of sorted positions in the same bucket within distance k.

    Position p is verified against the rest of its bucket, the range (p, end of bucket).
    """
    parts = []
    for lo in range(0, bd.sbv.size, chunk):
        v = bd.sbv[lo : lo + chunk]
        pos = np.arange(lo, lo + v.size, dtype=np.int64)
        end = np.searchsorted(bd.sbv, v, side="right")  # sorted keys: a cheap merge-like search
        parts.append(_verify_ranges(bd.sh, pos, bd.sh[lo : lo + v.size], pos + 1, end - pos - 1, k))
    return _concat(parts)


def _concat(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return _EMPTY
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _all_pairs(h: np.ndarray, k: int, query: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense blocked all-pairs (the (0, 0) plan): rows i against columns j > i."""
    n = h.size
    kk = np.uint8(min(k, 255))
    out_s, out_t, out_d = [], [], []
    rows = max(1, (1 << 20) // max(n, 1))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        pc = np.bitwise_count(h[lo:hi, None] ^ h[None, lo:])  # only columns j >= lo (upper triangle)
        r, c = np.nonzero(pc <= kk)
        i, j = r + lo, c + lo
        sel = j > i
        if query is not None:
            sel &= query[i] | query[j]
        out_s.append(i[sel])
        out_t.append(j[sel])
        out_d.append(pc[r[sel], c[sel]])
    if not out_s:
        return _EMPTY
    return np.concatenate(out_s).astype(np.int64), np.concatenate(out_t).astype(np.int64), np.concatenate(out_d)


def find_pairs(
    hashes: np.ndarray,
    k: int,
    plan: SearchPlan | None = None,
    query_mask: np.ndarray | None = None,
    *,
    return_distances: bool = False,
    chunk: int = 1 << 20,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, with popcount(h_i ^ h_j) <= k: shape (p, 2) int64, unique, sorted.

    ``query_mask`` (bool, one per hash) restricts the result to pairs with at least one query side,
    e.g. a new drop (True) against an accepted reference set (False) whose own pairs were handled
    before. With few queries the search is asymmetric: only queries probe, so the cost scales with
    the number of queries, not with the reference size. ``return_distances`` also returns the
    distances (uint8, aligned with the pairs). Besides the O(n) sorted copy of one band at a time,
    working memory is bounded by ``chunk`` probing items per step.
    """
    h = _as_hashes(hashes)
    n = h.size
    if k < 0:
        raise ValueError("k must be >= 0")
    query = None
    if query_mask is not None:
        query = np.asarray(query_mask, dtype=bool)
        if query.shape != (n,):
            raise ValueError("query_mask must have one bool per hash")
    n_q = None if query is None else int(query.sum())
    asym = query is not None and 2 * n_q < n
    if plan is None:
        plan = plan_search(n, k, n_queries=n_q if asym else None)
    elif plan.k < k:
        raise ValueError(f"plan was made for k={plan.k} < {k}: it would miss pairs")

    if n < 2 or (query is not None and n_q == 0):
        s = t = np.empty(0, np.int64)
        d = np.empty(0, np.uint8)
    elif plan.all_pairs:
        s, t, d = _all_pairs(h, k, query)
    else:
        parts = [_search_band(h, plan, b, k, query if asym else None, chunk) for b in range(len(plan.bands))]
        s = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
        d = np.concatenate([p[2] for p in parts])
        if query is not None and not asym:
            keep = query[s] | query[t]
            s, t, d = s[keep], t[keep], d[keep]
    i, j = np.minimum(s, t), np.maximum(s, t)
    o = np.lexsort((j, i))
    pairs = np.stack([i[o], j[o]], axis=1).astype(np.int64)
    if return_distances:
        return pairs, d[o].astype(np.uint8)
    return pairs


def _search_band(
    h: np.ndarray, plan: SearchPlan, b: int, k: int, query: np.ndarray | None, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (original indices) whose first qualifying band is ``b``."""
    width, t = plan.bands[b][1], plan.radii[b]
    n_probe = h.size * (ball_size(width, t) - 1) / 2 if query is None else int(query.sum()) * ball_size(width, t)
    bd = _Band(h, plan.bands[b], _use_table(width, n_probe + h.size))
    sbv, sh, n = bd.sbv, bd.sh, h.size
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    masks = _masks(width, t)
    if query is None:
        found.append(_self_bucket(bd, k, chunk))
        # probe v ^ mask from the side where the mask's top bit is 0: each bucket pair once
        tops = np.array([int(m).bit_length() - 1 for m in masks], dtype=np.int64)
        for lo in range(0, n, chunk):
            pos = np.arange(lo, min(n, lo + chunk), dtype=np.int64)
            v = sbv[lo : lo + chunk]
            for top in np.unique(tops).tolist():
                sel = np.flatnonzero(((v >> top) & 1) == 0)
                src, vs = pos[sel], v[sel]
                hs = sh[src]
                for m in masks[tops == top].tolist():
                    found.append(_probe(bd, src, vs, hs, m, k))
    else:
        qpos = np.flatnonzero(query[bd.order])
        for lo in range(0, qpos.size, chunk):
            src = qpos[lo : lo + chunk]
            vs, hs = sbv[src], sh[src]
            for m in [0, *masks.tolist()]:
                found.append(_probe(bd, src, vs, hs, m, k))
    s = np.concatenate([f[0] for f in found])
    tt = np.concatenate([f[1] for f in found])
    d = np.concatenate([f[2] for f in found])
    i, j = bd.order[s], bd.order[tt]
    keep = i != j
    if query is not None:
        # a query-query pair is probed from both sides: keep the one from the smaller index
        keep &= ~query[j] | (i < j)
    if b:
        keep &= ~_earlier_band_hit(h[i] ^ h[j], plan, b)
    return i[keep], j[keep], d[keep]


# ----------------------------------------------------------------------------------------------
# Distributed form: keys for a GroupByKey and verification of one group


def make_key(band: int, value: int) -> int:
    """Group key of band value ``value`` in band ``band``: (band << 32) | value."""
    return (int(band) << MAX_BAND_BITS) | int(value)


def key_band(key: int) -> int:
    """Band index of a group key."""
    return int(key) >> MAX_BAND_BITS


@dataclass(frozen=True)
class BandKeys:
    """Keys of a batch of hashes: ``home[i, b]`` = key of item i in band b; probes as (item, key)."""

    home: np.ndarray  # (n, m) int64
    probe_item: np.ndarray  # (P,) int64 index into the batch
    probe_key: np.ndarray  # (P,) int64


def band_keys(hashes: np.ndarray, plan: SearchPlan, query_mask: np.ndarray | None = None) -> BandKeys:
    """Home and probe keys of each hash under ``plan`` (see the module docstring for the scheme).

    Without ``query_mask`` every item probes the half ball (values above its own); with it, only
    query items probe, over the full ball, and reference items emit home keys only.
    """
    h = _as_hashes(hashes)
    n, m = h.size, len(plan.bands)
    home = np.empty((n, m), dtype=np.int64)
    p_item, p_key = [], []
    query = None if query_mask is None else np.asarray(query_mask, dtype=bool)
    items = np.arange(n, dtype=np.int64)
    for b, (band, t) in enumerate(zip(plan.bands, plan.radii)):
        v = band_values(h, band)
        base = np.int64(b) << np.int64(MAX_BAND_BITS)
        home[:, b] = base | v
        masks = _masks(band[1], t)
        if query is None:
            for msk in masks:
                top = int(msk).bit_length() - 1
                sel = ((v >> top) & 1) == 0
                p_item.append(items[sel])
                p_key.append(base | (v[sel] ^ msk))
        else:
            for msk in masks:
                p_item.append(items[query])
                p_key.append(base | (v[query] ^ msk))
    if p_item:
        return BandKeys(home, np.concatenate(p_item), np.concatenate(p_key))
    e = np.empty(0, np.int64)
    return BandKeys(home, e, e.copy())


def item_band_keys(hash_value: int, plan: SearchPlan, query: bool | None = None) -> tuple[list[int], list[int]]:
    """(home keys, probe keys) of one hash, for a per-element Beam ``FlatMap``.

    ``query=None``: symmetric scheme (half-ball probes). ``True``/``False``: query mode, where a
    query probes the full ball and a reference item only has home keys.
    """
    h = int(hash_value) & ((1 << HASH_BITS) - 1)
    homes, probes = [], []
    for b, ((shift, width), t) in enumerate(zip(plan.bands, plan.radii)):
        v = (h >> shift) & ((1 << width) - 1)
        homes.append(make_key(b, v))
        if query is False:
            continue
        for msk in _masks(width, t).tolist():
            if query is None and (v >> (msk.bit_length() - 1)) & 1:
                continue
            probes.append(make_key(b, v ^ msk))
    return homes, probes


def verify_group(
    key: int,
    home_ids: list,
    home_hashes: np.ndarray,
    probe_ids: list,
    probe_hashes: np.ndarray,
    plan: SearchPlan,
    k: int | None = None,
    home_query: np.ndarray | None = None,
) -> list[tuple[object, object, int]]:
    """Verified pairs of one group ``key``: home x home and probe x home within distance k.

    Returns (id_a, id_b, distance) with id_a < id_b (ids must be comparable, e.g. record ids or
    indices). A pair is kept only in its first qualifying band, so across all groups each pair
    appears exactly once. ``home_query`` (one bool per home item) selects the query-mode scheme of
    ``band_keys(..., query_mask=...)``: probes are then queries, home x home pairs need one query
    side, and a query-query pair is kept from the side whose probe id is smaller.
    """
    k = plan.k if k is None else k
    if k > plan.k:
        raise ValueError(f"plan was made for k={plan.k} < {k}: it would miss pairs")
    b = key_band(key)
    hh = _as_hashes(home_hashes)
    ph = _as_hashes(probe_hashes)
    nh = hh.size
    out: list[tuple[object, object, int]] = []
    if nh == 0:
        return out
    # home x home (same band value), upper triangle
    ia, ib = np.triu_indices(nh, 1)
    x = hh[ia] ^ hh[ib]
    keep = np.bitwise_count(x) <= k
    if home_query is not None:
        hq = np.asarray(home_query, dtype=bool)
        keep &= hq[ia] | hq[ib]
    if b:
        keep &= ~_earlier_band_hit(x, plan, b)
    for a_, b_, d in zip(ia[keep].tolist(), ib[keep].tolist(), np.bitwise_count(x[keep]).tolist()):
        out.append(_ordered(home_ids[a_], home_ids[b_], d))
    # probe x home
    if ph.size:
        x = ph[:, None] ^ hh[None, :]
        keep = np.bitwise_count(x) <= k
        if b:
            keep &= ~_earlier_band_hit(x, plan, b)
        pi, hi = np.nonzero(keep)
        for p_, h_, d in zip(pi.tolist(), hi.tolist(), np.bitwise_count(x[pi, hi]).tolist()):
            pid, hid = probe_ids[p_], home_ids[h_]
            if pid == hid:
                continue
            if home_query is not None and bool(home_query[h_]) and not pid < hid:
                continue  # the same query-query pair is also probed from the other side
            out.append(_ordered(pid, hid, d))
    return out


def _ordered(a, b, d: int) -> tuple[object, object, int]:
    return (a, b, int(d)) if a < b else (b, a, int(d))


# ----------------------------------------------------------------------------------------------
# Clusters and representatives


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` items: the smallest member index (int64)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if pairs.size == 0:
        return np.arange(n, dtype=np.int64)
    g = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    smallest = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def choose_representatives(
    labels: np.ndarray,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    caption_len: np.ndarray | None = None,
    record_ids: np.ndarray | None = None,
    locked: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Representative of each item's cluster and whether the item is kept.

    Rule, per cluster (first criterion that differs wins):
      1. a locked member (already accepted, e.g. the reference set) beats any unlocked one;
      2. largest pixel area width * height;
      3. longest caption (characters);
      4. smallest record id (then smallest index), so the choice is deterministic.
    Returns (rep, keep): ``rep[i]`` is the index of the representative of item i's cluster;
    ``keep[i]`` is True for representatives and for every locked item (an accepted item is never
    withdrawn; several locked members of one cluster all stay).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    idx = np.arange(n, dtype=np.int64)
    if n == 0:
        return idx, np.zeros(0, dtype=bool)
    keys: list[np.ndarray] = [idx]  # np.lexsort: last key is primary
    if record_ids is not None:
        keys.append(np.asarray(record_ids))
    if caption_len is not None:
        keys.append(-np.asarray(caption_len, dtype=np.int64))
    if width is not None and height is not None:
        keys.append(-(np.asarray(width, dtype=np.int64) * np.asarray(height, dtype=np.int64)))
    lock = np.zeros(n, dtype=bool) if locked is None else np.asarray(locked, dtype=bool)
    keys.append(~lock)
    keys.append(labels)
    o = np.lexsort(keys)
    first = np.ones(n, dtype=bool)
    first[1:] = labels[o][1:] != labels[o][:-1]
    best = np.empty(labels.max() + 1, dtype=np.int64)
    best[labels[o][first]] = o[first]
    rep = best[labels]
    return rep, (rep == idx) | lock
