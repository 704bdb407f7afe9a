"""Exact near-duplicate search over 64-bit hashes: curation.neardup vs all-pairs baselines.

    python -m bench.bench_neardup                  # 10^6 hashes, k = 4, 6, 8, 10; writes README
    python -m bench.bench_neardup --quick          # 5*10^4 hashes, baselines run in full; prints only
    python -m bench.bench_neardup --n 200000 --ks 10 --queries 1000

Data: ``n`` uniform random 64-bit hashes with planted pairs: ``--planted`` pairs at each distance
0..max(k)+2, on disjoint items (the ones beyond k are negative controls). One core: OMP, MKL and
OpenBLAS threads are set to 1 before numpy and faiss load, and ``faiss.omp_set_num_threads(1)``.

Methods, all exact:
  ours   ``find_pairs(hashes, k)``, the plan chosen by ``plan_search`` (time includes planning);
  naive  numpy XOR + ``np.bitwise_count`` of a row against all hashes (blocks of rows);
  faiss  ``faiss.IndexBinaryFlat`` ``range_search`` with radius k + 1 (faiss keeps d < radius).

The baselines take ~30 min (naive) and ~10 min (faiss) at 10^6 on one core, so unless they run in
full (``--full-baselines``, the default with ``--quick``) they run on ``--queries`` random query
rows against all n hashes, and their time is extrapolated linearly, since all-pairs work is exactly
linear in the number of query rows: naive x (n - 1) / (2 q) (a self-join visits the n(n-1)/2 pairs
of the upper triangle), faiss x n / q (its self-join searches all n rows against the index).
Exactness: on the query rows, our pairs touching a query row must equal the naive and faiss
results; in full mode the three pair sets must be identical. Recall is measured against the
planted pairs within k; planted pairs beyond k must be absent.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.report import machine, markdown_table, write_block  # noqa: E402
from curation.neardup import find_pairs, pair_distances, plan_search  # noqa: E402


def make_hashes(n: int, planted: int, max_d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, planted pairs (p, 2), their distances): uniform hashes + planted pairs per distance."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    n_pairs = planted * (max_d + 1)
    if 2 * n_pairs > n:
        raise ValueError("too many planted pairs for n")
    items = rng.permutation(n)[: 2 * n_pairs].reshape(-1, 2)
    dist = np.repeat(np.arange(max_d + 1), planted)
    for (a, b), d in zip(items, dist):
        bits = rng.choice(64, size=int(d), replace=False)
        h[b] = h[a] ^ np.uint64(sum(1 << int(x) for x in bits))
    pairs = np.sort(items, axis=1).astype(np.int64)
    assert np.array_equal(pair_distances(h, pairs), dist)
    return h, pairs, dist


def naive_rows(h: np.ndarray, rows: np.ndarray, k: int, upper: bool) -> np.ndarray:
    """Pairs (row, j) with d <= k by XOR + popcount, blocks of rows against the hashes.

    ``upper``: ``rows`` is all of 0..n-1 and each block is compared with the columns from its first
    row on (the upper triangle, n(n-1)/2 pairs); else each row against all n hashes, j != row.
    """
    out = []
    block = max(1, (1 << 22) // max(h.size, 1))
    for lo in range(0, rows.size, block):
        r = rows[lo : lo + block]
        c0 = int(r[0]) if upper else 0
        pc = np.bitwise_count(h[r, None] ^ h[None, c0:])
        i, j = np.nonzero(pc <= k)
        i, j = r[i], j + c0
        keep = j > i if upper else j != i
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), np.int64)


def faiss_rows(index, codes: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Pairs (row, j), j != row, from faiss range_search (radius k + 1 since faiss keeps d < radius)."""
    out = []
    for lo in range(0, rows.size, 4096):
        r = rows[lo : lo + 4096]
        lims, _, ids = index.range_search(codes[r], k + 1)
        i = np.repeat(r, np.diff(lims).astype(np.int64))
        keep = ids != i
        out.append(np.stack([i[keep], ids[keep].astype(np.int64)], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), np.int64)


def canon(pairs: np.ndarray) -> set[tuple[int, int]]:
    p = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    return set(map(tuple, p.tolist()))


def run(n: int, ks: list[int], planted: int, queries: int, full: bool, seed: int = 0) -> list[list[object]]:
    import faiss

    faiss.omp_set_num_threads(1)
    h, planted_pairs, planted_d = make_hashes(n, planted, max(ks) + 2, seed)
    codes = h.view(np.uint8).reshape(n, 8)  # Hamming distance does not depend on the byte order
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    rng = np.random.default_rng(seed + 1)
    rows = np.arange(n) if full else np.sort(rng.choice(n, size=min(queries, n), replace=False))
    q = rows.size
    table = []
    for k in ks:
        t0 = time.perf_counter()
        plan = plan_search(n, k)
        pairs = find_pairs(h, k, plan=plan)
        t_ours = time.perf_counter() - t0

        t0 = time.perf_counter()
        nv = naive_rows(h, rows, k, upper=full)
        t_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        fs = faiss_rows(index, codes, rows, k)
        t_faiss = time.perf_counter() - t0
        if not full:
            t_naive *= (n - 1) / (2 * q)
            t_faiss *= n / q

        ours = canon(pairs)
        if full:
            exact = ours == canon(nv) == canon(fs)
        else:
            touch = np.zeros(n, dtype=bool)
            touch[rows] = True
            mine = canon(pairs[touch[pairs[:, 0]] | touch[pairs[:, 1]]])
            exact = mine == canon(nv) == canon(fs)
        within = planted_d <= k
        recall = np.mean([tuple(p) in ours for p in planted_pairs[within].tolist()])
        leaked = sum(tuple(p) in ours for p in planted_pairs[~within].tolist())
        assert exact and recall == 1.0 and leaked == 0, (k, exact, recall, leaked)
        assert len(pairs) == 0 or int(pair_distances(h, pairs).max()) <= k
        ext = "" if full else " (extrap.)"
        table.append(
            [
                k,
                plan.describe(),
                f"{t_ours:.2f}",
                f"{t_naive:.0f}{ext}",
                f"{t_faiss:.0f}{ext}",
                f"{t_naive / t_ours:.0f}x",
                f"{t_faiss / t_ours:.1f}x",
                f"{len(pairs):,}",
                f"{recall:.3f}",
                "yes" if exact else "NO",
            ]
        )
        print(table[-1], flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--ks", default="4,6,8,10")
    ap.add_argument("--planted", type=int, default=1000, help="planted pairs per distance 0..max(k)+2")
    ap.add_argument("--queries", type=int, default=2000, help="baseline query rows (extrapolated)")
    ap.add_argument("--full-baselines", action="store_true", help="run the baselines over all rows")
    ap.add_argument("--quick", action="store_true", help="5*10^4 hashes, 100 planted per distance, full baselines")
    ap.add_argument("--write", action="store_true", help="write the README block even with --quick")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.planted, args.full_baselines = min(args.n, 50_000), 100, True
    ks = [int(x) for x in args.ks.split(",")]
    table = run(args.n, ks, args.planted, args.queries, args.full_baselines)
    header = [
        "k",
        "plan (bands, radii)",
        "ours s",
        "naive s",
        "faiss flat s",
        "vs naive",
        "vs faiss",
        "pairs found",
        "recall",
        "exact",
    ]
    how = (
        "run in full"
        if args.full_baselines
        else f"measured on {min(args.queries, args.n):,} random query rows against all {args.n:,} hashes and "
        "extrapolated linearly: naive x (n-1)/(2q) (upper triangle), faiss x n/q (n queries)"
    )
    body = (
        f"Exact near-duplicate pairs within Hamming distance k among {args.n:,} uniform 64-bit hashes with "
        f"{args.planted:,} planted pairs at each distance 0..{max(ks) + 2}; one core for every method "
        f"(`python -m bench.bench_neardup`). Baselines (numpy XOR + popcount all pairs; "
        f"faiss-cpu IndexBinaryFlat range_search) {how}. "
        "'exact': our pairs equal both baselines' on the rows they ran; recall over the planted pairs "
        "within k (planted pairs beyond k were never reported).\n\n"
        + markdown_table(header, table)
        + f"\n\nMachine: {machine()}."
    )
    if args.quick and not args.write:
        print(body)
    else:
        write_block("neardup", body)


if __name__ == "__main__":
    main()
