"""The distributed dedup primitive (pipelines/dedup.py) against the in-memory engines of curation/ as
oracles: real near-duplicate images (../shared/data/near_dup, read in place) and planted graphs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from curation import image_dedup, imaging, ingest, minhash, neardup, phash, storage, video
from pipelines import dedup
from pipelines import documents as docs_pipe
from pipelines import image_text as it
from pipelines import video as video_pipe
from pipelines.common import manifest_url, quarantine_url

K = 10
PHASH_SCHEMA = pa.schema(list(it.SAMPLE_SCHEMA) + [pa.field("phash", pa.uint64())])


# ----------------------------------------------------------------------------------------------
# images: run_neardup against image_dedup.resolve_clusters


def _record(rid: str, partition: str, h: int, sha: str | None = None, width: int = 100, height: int = 100,
            caption: str = "a caption") -> dict:
    return {"id": rid, "partition": partition, "sha256": sha or hashlib.sha256(rid.encode()).hexdigest(),
            "width": width, "height": height, "caption": caption, "phash": int(h) & (2**64 - 1)}


def _write(url: str, rows: list[dict], schema: pa.Schema) -> None:
    storage.write_table(url, pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema))


def _oracle(records: list[dict], bench: list[tuple[str, int]], k: int = K, bk: int = K) -> dict[str, tuple]:
    """Decisions of the in-memory engine: exact groups, find_pairs, benchmark_hits, resolve_clusters."""
    by_sha: dict[str, list[dict]] = {}
    for r in records:
        by_sha.setdefault(r["sha256"], []).append(r)
    unique, out = [], []
    for group in by_sha.values():
        for rec in image_dedup.decide_exact(group):
            (unique if rec["_decision"] == "keep" else out).append(rec)
    unique = sorted(({k_: v for k_, v in r.items() if k_ != "_decision"} for r in unique), key=lambda r: r["id"])
    h = np.array([r["phash"] for r in unique], dtype=np.uint64)
    pairs, dist = neardup.find_pairs(h, k, return_distances=True)
    edges = sorted((unique[a]["id"], unique[b]["id"], int(d)) for (a, b), d in zip(pairs.tolist(), dist.tolist()))
    hits = {}
    if bench:
        ids = [r["id"] for r in unique] + [b for b, _ in bench]
        allh = np.concatenate([h, np.array([x for _, x in bench], dtype=np.uint64)])
        mask = np.array([False] * len(unique) + [True] * len(bench))
        bp, bd = neardup.find_pairs(allh, bk, query_mask=mask, return_distances=True)
        cross = [(min(ids[a], ids[b]), max(ids[a], ids[b]), int(d)) for (a, b), d in zip(bp.tolist(), bd.tolist())]
        hits = image_dedup.benchmark_hits(cross, lambda i: i.startswith("bench:"))
    out += image_dedup.resolve_clusters(unique, edges, hits)
    return {r["id"]: (r["_decision"], r.get("dup_of"), r.get("hamming"), r["cluster_id"], r["cluster_size"]) for r in out}


def _run_neardup(root: Path, records: list[dict], bench: list[tuple[str, int]], k: int = K) -> dict[str, tuple]:
    parts = sorted({r["partition"] for r in records})
    for part in parts:
        _write(manifest_url(str(root), "image_phash", part), [r for r in records if r["partition"] == part], PHASH_SCHEMA)
    if bench:
        _write(manifest_url(str(root), "benchmark_fingerprints", it.CORPUS),
               [{"id": b, "phash": h, "byte_offset": -1, "byte_size": -1} for b, h in bench], it.FINGERPRINT_SCHEMA)
    it.run_neardup(str(root), parts, it.ImageTextSettings(hamming_k=k, benchmark_k=k))
    got: dict[str, tuple] = {}
    for part in parts:
        for r in storage.read_records(manifest_url(str(root), "image_neardup_clusters", part)):
            got[r["id"]] = ("keep", None, None, r["cluster_id"], r["cluster_size"])
        for r in storage.read_records(quarantine_url(str(root), "image_neardup_clusters", part)):
            got[r["id"]] = (r["reason"], r["dup_of"], r["hamming"], r["cluster_id"], r["cluster_size"])
    return got


def _flip(h: int, bits: range | list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def test_planted_graph_chains_stars_hot_hash_drops_and_benchmarks(tmp_path: Path) -> None:
    """A chain across three drops, a star, 40 records of one pHash, exact copies and benchmark hits."""
    rng = np.random.default_rng(7)
    base = [int(x) for x in rng.integers(0, 2**63, size=5, dtype=np.int64)]
    recs = []
    # chain c0 ~ c1 ~ ... ~ c4: 6 new bits per step, so c_i and c_{i+2} are 12 bits apart (> k)
    for i in range(5):
        recs.append(_record(f"c{i}", f"d{3 - i % 3}", _flip(base[0], range(6 * i)), width=100 + i))
    # star: centre s0 and 4 leaves 6 bits away on disjoint bits (leaves are 12 apart from each other)
    recs.append(_record("s0", "d2", base[1]))
    recs += [_record(f"s{j}", "d1", _flip(base[1], range(6 * j, 6 * j + 6)), width=50) for j in range(1, 5)]
    # a hot hash: 40 records with one pHash (distinct bytes), one more 2 bits away
    recs += [_record(f"h{j:02d}", "d2", base[2], caption="x" * j) for j in range(40)]
    recs.append(_record("hz", "d3", _flip(base[2], [1, 2])))
    # three byte-identical copies (one sha256), and far singletons
    recs += [_record(f"e{j}", "d3", base[3], sha="same-bytes", caption="y" * j) for j in range(3)]
    recs += [_record(f"u{j}", "d1", int(x)) for j, x in enumerate(rng.integers(0, 2**63, size=6, dtype=np.int64))]
    # benchmarks: bench:a is 2 bits from c3 (so 8 from c2 and c4); bench:b is 5 bits from the star
    # centre (11 from its leaves); bench:z is far from everything
    bench = [("bench:a", _flip(base[0], list(range(18)) + [60, 61])), ("bench:b", _flip(base[1], range(40, 45))),
             ("bench:z", base[4])]

    got = _run_neardup(tmp_path, recs, bench)
    assert got == _oracle(recs, bench)
    assert Counter(v[0] for v in got.values()) == {"keep": 10, "near_duplicate": 44, "exact_duplicate": 2,
                                                   "benchmark_near_duplicate": 4}
    # the chain is one cluster spanning d1..d3; contaminated members are never its representative
    assert {got[f"c{i}"][3:] for i in range(5)} == {("c0", 5)}
    assert [got[f"c{i}"][:3] for i in range(5)] == [
        ("near_duplicate", "c1", 6), ("keep", None, None), ("benchmark_near_duplicate", "bench:a", 8),
        ("benchmark_near_duplicate", "bench:a", 2), ("benchmark_near_duplicate", "bench:a", 8)]
    # the star centre is contaminated; the smallest leaf is kept, the others are its duplicates
    assert got["s0"] == ("benchmark_near_duplicate", "bench:b", 5, "s0", 5)
    assert got["s1"][0] == "keep" and all(got[f"s{j}"][:3] == ("near_duplicate", "s1", 6) for j in (2, 3, 4))
    # the hot hash: one cluster of 41, the longest caption of the earliest drop kept, hamming 0 for copies
    assert got["h39"] == ("keep", None, None, "h00", 41)
    assert all(got[f"h{j:02d}"] == ("near_duplicate", "h39", 0, "h00", 41) for j in range(39))
    assert got["hz"] == ("near_duplicate", "h39", 2, "h00", 41)
    # byte-identical copies: the longest caption is kept, the others are exact duplicates of it
    assert got["e2"] == ("keep", None, None, "e2", 1)
    assert got["e0"] == got["e1"] == ("exact_duplicate", "e2", 0, "e2", 3)
    assert all(got[f"u{j}"] == ("keep", None, None, f"u{j}", 1) for j in range(6))


@pytest.fixture(scope="module")
def near_dup_records(shared_data: Path) -> list[dict]:
    """Every readable image under near_dup/ (and the COCO originals of its derived set), one drop per folder."""
    nd = shared_data / "near_dup"
    paths = sorted(p for p in nd.rglob("*") if p.suffix.lower().lstrip(".") in ingest.IMAGE_EXTS)
    groups = [json.loads(line) for line in (nd / "derived_coco_mini" / "groups.jsonl").read_text().splitlines()]
    paths += [(nd / "derived_coco_mini" / g["original"]).resolve() for g in groups]
    datas = [p.read_bytes() for p in paths]
    hashes, errors = phash.phash_many(datas)
    out = []
    for p, data, h, err in zip(paths, datas, hashes.tolist(), errors):
        if err is not None:
            continue
        info = imaging.inspect_image(data)
        rel = str(p.relative_to(shared_data))
        folder = rel.split("/")[1]
        out.append(_record(hashlib.sha256(rel.encode()).hexdigest()[:16], f"d-{folder}", int(h), sha=hashlib.sha256(data).hexdigest(),
                           width=info.oriented_width or 0, height=info.oriented_height or 0, caption=p.stem))
    return out


def test_real_near_dup_images_equal_the_in_memory_engine(tmp_path: Path, near_dup_records: list[dict]) -> None:
    recs = near_dup_records
    # the first 5 COCO originals are benchmark images: their variants are contamination
    bench = [(f"bench:{r['caption']}", r["phash"]) for r in recs if r["partition"] == "d-coco_mini"][:5]
    got = _run_neardup(tmp_path, recs, bench)
    want = _oracle(recs, bench)
    assert got == want
    reasons = Counter(v[0] for v in got.values())
    assert reasons["exact_duplicate"] > 0 and reasons["near_duplicate"] > 0 and reasons["benchmark_near_duplicate"] >= 5
    assert len(got) == len(recs)


# ----------------------------------------------------------------------------------------------
# the primitive's pieces


def _counter(result, name: str) -> int:  # noqa: ANN001
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


def test_hot_hash_of_ten_thousand_gives_a_star_not_all_pairs() -> None:
    m = 10_000
    h = 0x0123_4567_89AB_CDEF
    items = [(f"n{i:05d}", h) for i in range(m)] + [("near", h ^ 0b101), ("far", dedup.to_int64(~h))]
    p = TestPipeline(runner="FnApiRunner")
    edges = p | beam.Create(items) | dedup.HammingEdges(K, dedup.search_plan(m, K))
    assert_that(edges | beam.combiners.Count.Globally(), equal_to([m]))  # m - 1 star edges + near -> head
    assert_that(edges | beam.Filter(lambda e: e[2] > 0), equal_to([("n00000", "near", 2)]), label="band edges")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "identical_edges") == m - 1


def test_connected_components_equal_scipy_on_random_graphs() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    pairs = np.unique(np.sort(rng.integers(0, n, size=(2400, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    labels = neardup.clusters(n, pairs)
    want = sorted((f"v{i:05d}", f"v{labels[i]:05d}") for i in set(pairs.ravel().tolist()))
    edges = [(f"v{a:05d}", f"v{b:05d}", 0) for a, b in pairs.tolist()]
    with TestPipeline(runner="FnApiRunner") as p:
        assert_that(p | beam.Create(edges) | dedup.ConnectedComponents(), equal_to(want))


def test_nearest_reference_equals_benchmark_hits() -> None:
    rng = np.random.default_rng(5)
    refs = [(f"bench:{i}", int(x)) for i, x in enumerate(rng.integers(0, 2**63, size=20, dtype=np.int64))]
    refs.append(("bench:twin", refs[0][1]))  # same hash as bench:0: bench:0 (smaller id) wins ties
    recs = [(f"r{i}-{j}", _flip(h, rng.choice(64, size=j * 3, replace=False).tolist())) for i, (_, h) in enumerate(refs[:10]) for j in range(5)]
    recs += [("r-copy-a", recs[0][1]), ("r-copy-b", recs[0][1])]
    ids = [r for r, _ in recs] + [b for b, _ in refs]
    allh = np.array([h for _, h in recs] + [h for _, h in refs], dtype=np.uint64)
    bp, bd = neardup.find_pairs(allh, K, query_mask=np.array([False] * len(recs) + [True] * len(refs)), return_distances=True)
    cross = [(min(ids[a], ids[b]), max(ids[a], ids[b]), int(d)) for (a, b), d in zip(bp.tolist(), bd.tolist())]
    want = image_dedup.benchmark_hits(cross, lambda i: i.startswith("bench:"))
    assert len(want) >= 20
    with TestPipeline(runner="FnApiRunner") as p:
        hits = ((p | "Recs" >> beam.Create([(r, dedup.to_int64(h)) for r, h in recs]),
                 p | "Refs" >> beam.Create([(r, dedup.to_int64(h)) for r, h in refs]))
                | dedup.NearestReference(K, dedup.search_plan(0, K)))
        assert_that(hits, equal_to(sorted(want.items())))


# ----------------------------------------------------------------------------------------------
# video: AlignedHammingEdges + GroupComponents against video.cluster_videos


def test_video_components_equal_cluster_videos() -> None:
    rng = np.random.default_rng(11)
    rows = []

    def row(vid: str, part: str, hashes: list[int], width: int = 320, bit_rate: int = 1000) -> dict:
        return {"id": vid, "partition": part, "source": f"{part}/{vid}.mp4", "width": width, "height": 240,
                "duration_s": 10.0, "bit_rate": bit_rate, "hashes": [int(h) & (2**64 - 1) for h in hashes]}

    for g in range(6):
        base = [int(x) for x in rng.integers(0, 2**63, size=8, dtype=np.int64)]
        rows.append(row(f"g{g}a", "d1", base, bit_rate=500))
        # 3 of 8 frames replaced: 5 of 8 still match (a strict majority)
        rows.append(row(f"g{g}b", "d2", [_flip(h, range(30)) if p < 3 else h for p, h in enumerate(base)], width=640))
        # 4 frames replaced: only 4 match the original (no pair), but 7 match b... chains through b
        rows.append(row(f"g{g}c", "d2", [_flip(h, range(30)) if p < 3 or p == 7 else h for p, h in enumerate(base)]))
        rows.append(row(f"g{g}d", "d1", [_flip(h, range(20, 50)) if p < 4 else h for p, h in enumerate(base)]))
    same = [int(x) for x in rng.integers(0, 2**63, size=8, dtype=np.int64)]
    rows += [row(f"same{j}", "d3", same, bit_rate=j) for j in range(30)]  # identical vectors: a star
    rows.append(row("same0", "d1", same))  # one file in two drops: two rows, one cluster
    want = video.cluster_videos(rows, K, None)
    assert Counter(r["cluster_size"] for r in want) == {3: 18, 1: 6, 31: 31}
    with TestPipeline(runner="FnApiRunner") as p:
        nodes = p | beam.Create(rows) | beam.Map(lambda r: ((r["id"], r["partition"], r["source"]), r))
        edges = (nodes | "H" >> beam.MapTuple(lambda n, r: (n, r["hashes"]))
                 | dedup.AlignedHammingEdges(K, dedup.search_plan(len(rows), K), need=5))
        out = ({"nodes": nodes, "edges": edges} | dedup.GroupComponents()
               | beam.FlatMap(video_pipe._footage_decisions, K).with_outputs("quarantine", main="ok"))
        allrows = (out.ok, out.quarantine | beam.Map(lambda r: {k: v for k, v in r.items() if k not in ("stage", "reason", "error")})) | beam.Flatten()
        assert_that(allrows, equal_to(want))


# ----------------------------------------------------------------------------------------------
# documents: run_minhash against minhash.near_duplicates


def test_minhash_clusters_equal_near_duplicates(tmp_path: Path, shared_data: Path) -> None:
    gt = json.loads((shared_data / "web" / "article_extraction_benchmark" / "ground-truth.json").read_text())
    texts = [gt[k]["articleBody"] for k in sorted(gt)][:40]
    texts += [texts[0]] * 3  # identical copies: a star, and one bucket per band for them all
    words = texts[1].split()
    texts.append(" ".join(w if i % 40 else "changed" for i, w in enumerate(words)))  # a near copy
    texts += ["", ""]  # no shingles: never pair
    ids = [f"doc{i:03d}" for i in range(len(texts))]
    rows = [{"id": i, "partition": "p1" if n % 2 else "p0", "kind": "html",
             "document": json.dumps({"elements": [{"type": "text", "text": t}] if t else []})} for n, (i, t) in enumerate(zip(ids, texts))]
    schema = pa.schema([("id", pa.string()), ("partition", pa.string()), ("kind", pa.string()), ("document", pa.string())])
    root = str(tmp_path)
    for part in ("p0", "p1"):
        _write(manifest_url(root, "document_quality", part), [r for r in rows if r["partition"] == part], schema)
    s = docs_pipe.DocumentSettings()
    docs_pipe.run_minhash(root, ["p0", "p1"], s)
    got = {r["id"]: (r["cluster"], r["cluster_size"], r["representative"])
           for r in storage.read_records(manifest_url(root, "document_minhash_clusters", "all"))
           + storage.read_records(quarantine_url(root, "document_minhash_clusters", "all"))}

    sig = minhash.signatures(texts, num_perm=s.num_perm, seed=s.minhash_seed, ngram=s.minhash_ngram, hashfunc=s.minhash_hashfunc)
    labels, rep, _ = minhash.near_duplicates(sig, np.array([len(t) for t in texts]), np.array(ids), min_jaccard=s.minhash_threshold)
    size = Counter(labels.tolist())
    want = {ids[i]: (ids[labels[i]], size[labels[i]], ids[rep[i]]) for i in range(len(ids))}
    assert got == want
    assert got["doc040"] == ("doc000", 4, "doc000") and got["doc043"][1] == 2
    assert got["doc044"] == ("doc044", 1, "doc044") and got["doc045"] == ("doc045", 1, "doc045")
