"""Record-level duplicate decisions for image-caption records: exact (content hash), near
(pHash clusters), and contamination (near a benchmark image).

The array-level search lives in ``curation.neardup``; this module turns its edges into a decision
per record with one documented representative rule, shared by every caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation import neardup


def precedence(rec: dict) -> tuple:
    """Representative rule, smallest wins: the earlier drop (partition keys sort in arrival order;
    an already accepted record is never displaced by a new drop), then the larger image (pixels),
    then the longer caption, then the smaller record id (deterministic)."""
    return (rec["partition"], -(int(rec.get("width") or 0) * int(rec.get("height") or 0)),
            -len(rec.get("caption") or ""), rec["id"])


def decide_exact(group: Sequence[dict]) -> list[dict]:
    """One sha256 group: the representative gets ``_decision='keep'``, the rest 'exact_duplicate'."""
    group = sorted(group, key=precedence)
    rep = group[0]
    out = [dict(rep, _decision="keep")]
    for rec in group[1:]:
        out.append(dict(rec, _decision="exact_duplicate", dup_of=rep["id"], hamming=0,
                        cluster_id=rep["id"], cluster_size=len(group)))
    return out


def decide_cluster(ids: Sequence[str], ranks: Sequence, closest: Sequence[int | None],
                   bench: Sequence[tuple[str, int] | None]) -> list[dict]:
    """Decisions for the members of one connected component (any order), aligned with ``ids``.

    ``ranks``: each member's ``precedence`` key (smallest wins); ``closest``: its smallest distance
    to a neighbour in the component; ``bench``: (benchmark id, hamming) or None. Contaminated
    members are dropped whatever their cluster and are never the representative; the best clean
    member is kept; the rest are near duplicates of it. Each dict has ``_decision``, ``cluster_id``
    (smallest member id), ``cluster_size``, and for drops ``dup_of`` and ``hamming``.
    """
    clean = [i for i in range(len(ids)) if bench[i] is None]
    rep = min(clean, key=lambda i: ranks[i]) if clean else None
    base = {"cluster_id": min(ids), "cluster_size": len(ids)}
    out = []
    for i in range(len(ids)):
        if bench[i] is not None:
            bid, d = bench[i]
            out.append(dict(base, _decision="benchmark_near_duplicate", dup_of=bid, hamming=d))
        elif i == rep:
            out.append(dict(base, _decision="keep"))
        else:
            out.append(dict(base, _decision="near_duplicate", dup_of=ids[rep], hamming=closest[i]))
    return out


def resolve_clusters(nodes: Sequence[dict], pairs: Sequence[tuple[str, str, int]],
                     bench_hits: dict[str, tuple[str, int]]) -> list[dict]:
    """A decision for every node: kept representative, or dropped with reason and ``dup_of``.

    ``nodes``: records (after exact dedup) with id, partition, width, height, caption;
    ``pairs``: near-dup edges (id_a, id_b, hamming) among them; ``bench_hits``: id -> (benchmark id,
    hamming) for records within k of a benchmark image. Clusters are union-find connected
    components; ``decide_cluster`` decides each one. The in-memory engine (small corpora, notebooks,
    the oracle of the distributed ``pipelines.dedup``): each output record is the node plus the
    decision's columns.
    """
    index = {n["id"]: i for i, n in enumerate(nodes)}
    edges = np.array([(index[a], index[b]) for a, b, _ in pairs], dtype=np.int64).reshape(-1, 2)
    labels = neardup.clusters(len(nodes), edges)
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        members.setdefault(lab, []).append(i)
    best_dist: dict[str, int] = {}
    for a, b, d in pairs:
        best_dist[a] = min(best_dist.get(a, d), d)
        best_dist[b] = min(best_dist.get(b, d), d)
    out = []
    for group in members.values():
        ids = [nodes[i]["id"] for i in group]
        decisions = decide_cluster(ids, [precedence(nodes[i]) for i in group], [best_dist.get(x) for x in ids],
                                   [bench_hits.get(x) for x in ids])
        out += [dict(nodes[i], **dec) for i, dec in zip(group, decisions)]
    return out


def benchmark_hits(pairs: Sequence[tuple[str, str, int]], is_benchmark) -> dict[str, tuple[str, int]]:  # noqa: ANN001
    """id -> (closest benchmark id, hamming) from edges between corpus and benchmark items."""
    hits: dict[str, tuple[str, int]] = {}
    for a, b, d in sorted(pairs):
        if is_benchmark(a) == is_benchmark(b):
            continue
        bid, rid = (a, b) if is_benchmark(a) else (b, a)
        if rid not in hits or d < hits[rid][1]:
            hits[rid] = (bid, d)
    return hits
