"""One distributed dedup primitive, shared by image near-dup, benchmark decontamination, video
same-footage and document MinHash (DESIGN.md sections 2b and 4).

Four steps, each a composite ``PTransform`` that holds no per-record state on one worker:

1. ``StarOfIdentical``: records with an identical value (full hash, hash vector, signature) are
   grouped by that value; the smallest id is the head and every other member becomes one edge
   ``(head, member, weight)``. A hot value of m records gives m - 1 edges, never m^2 pairs, and
   only the heads go on to the candidate search.
2. Candidate edges from band keys and a ``GroupByKey``: ``HammingEdges`` (64-bit hashes within k,
   the multi-index scheme of ``curation.neardup``), ``AlignedHammingEdges`` (vectors of hashes,
   enough aligned positions within k), ``NearestReference`` (closest reference item per record,
   query mode). Callers with their own bucket rule (MinHash) group band keys themselves.
3. ``ConnectedComponents``: the edges alone go to one worker as a lifted union-find combine
   (partial forests per bundle, merged); its memory is proportional to the nodes that have an edge,
   never to the number of records. It emits ``(node, component id)`` as a PCollection; the component
   id is the smallest node of the component.
4. ``GroupComponents``: node attributes (slim: what the representative rule reads), component
   labels, closest-edge distances and any per-node extras are joined by ``CoGroupByKey`` on the
   node id and grouped by component id, so a caller applies its rule from curation/ to one
   component at a time. ``JoinById`` joins the resulting decisions back to the full records.

The in-memory engines in curation/ (``image_dedup.resolve_clusters``, ``neardup.find_pairs``,
``video.cluster_videos``, ``minhash.near_duplicates``) give the same clusters for small corpora and
are the oracles of tests/pipelines/test_dedup.py.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from curation import neardup

NAMESPACE = "dedup"
# Plans are made for at least this many items: below it the cost model may pick the all-pairs plan,
# whose single group key would put every hash on one worker.
MIN_PLAN_ITEMS = 1 << 20
# A distributed GroupByKey pays one shuffled element per probe key: weigh probes heavily so plans
# use fewer, larger groups (~27 keys per item at k=10 instead of ~236 for the in-memory plan).
PROBE_WEIGHT = 100.0

MASK64 = (1 << 64) - 1
Node = Hashable  # a node id: comparable and hashable (a record id, or a tuple for composite keys)
Edge = tuple  # (node_a, node_b, weight), node_a < node_b


def search_plan(n: int, k: int, n_queries: int | None = None) -> neardup.SearchPlan:
    """The banded plan the distributed Hamming search runs for about ``n`` hashes at distance ``k``.

    Every plan for k is exact, so the plan only moves cost. It is never the all-pairs plan (one
    group key for every hash); with few queries the symmetric plan is used instead.
    """
    n = max(int(n), MIN_PLAN_ITEMS)
    plan = neardup.plan_search(n, k, n_queries=n_queries, probe_weight=PROBE_WEIGHT)
    if plan.all_pairs:
        plan = neardup.plan_search(n, k, probe_weight=PROBE_WEIGHT)
    return plan


def to_int64(h: int) -> int:
    """A 64-bit hash as its signed bit pattern: Beam's integer coders stop at 2**63 - 1, and
    ``curation.neardup`` reads int64 as the same bits."""
    h = int(h) & MASK64
    return h - (1 << 64) if h >> 63 else h


def manifest_rows(urls: Sequence[str]) -> int:
    """Rows of parquet manifests, from their footers (the size a plan is made for)."""
    import pyarrow.parquet as pq

    from curation import storage

    n = 0
    for url in urls:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            n += pq.ParquetFile(f).metadata.num_rows
    return n


# ----------------------------------------------------------------------------------------------
# 1. identical values: a star


def _star(kv: tuple[Hashable, Iterable[Node]], weight: Any, counter: str) -> Iterator:
    value, nodes = kv
    head = min(nodes)  # GroupByKey values can be iterated twice: no list of the group is built
    yield head, value
    n = 0
    for node in nodes:
        if node != head:
            n += 1
            yield beam.pvalue.TaggedOutput("star", (head, node, weight))
    if n:
        Metrics.counter(NAMESPACE, counter).inc(n)


class StarOfIdentical(beam.PTransform):
    """(node, value) -> main: (head, value) once per distinct value (head = smallest node);
    'star': edges (head, member, ``weight``) for every other member. Access as ``result.heads``,
    ``result.star``."""

    def __init__(self, weight: Any = 0, counter: str = "identical_edges") -> None:
        super().__init__()
        self.weight, self.counter = weight, counter

    def expand(self, items):
        return (
            items
            | "ByValue" >> beam.Map(lambda kv: (kv[1], kv[0]))
            | "GroupValue" >> beam.GroupByKey()
            | "Star" >> beam.FlatMap(_star, self.weight, self.counter).with_outputs("star", main="heads")
        )


# ----------------------------------------------------------------------------------------------
# 2. candidate edges by band keys


def _band_records(item: tuple[Hashable, Node, int], plan: neardup.SearchPlan,
                  is_query: Callable[[Node], bool] | None) -> Iterator[tuple]:
    """(group, node, hash) -> ((group, band key), (is_home, node, hash)) for each home and probe key."""
    group, node, h = item
    query = None if is_query is None else bool(is_query(node))
    homes, probes = neardup.item_band_keys(h, plan, query=query)
    for key in homes:
        yield (group, key), (True, node, h)
    for key in probes:
        yield (group, key), (False, node, h)


def _verify(kv: tuple[tuple[Hashable, int], Iterable[tuple]], plan: neardup.SearchPlan, k: int,
            is_query: Callable[[Node], bool] | None) -> Iterator[tuple]:
    """Verified pairs of one band group: (group, a, b, distance), a < b, each pair in one group only."""
    (group, key), items = kv
    homes, probes = [], []
    for is_home, node, h in items:
        (homes if is_home else probes).append((node, h))
    hq = None if is_query is None else np.array([bool(is_query(n)) for n, _ in homes], dtype=bool)
    pairs = neardup.verify_group(
        key, [n for n, _ in homes], np.array([h for _, h in homes], dtype=np.int64),
        [n for n, _ in probes], np.array([h for _, h in probes], dtype=np.int64), plan, k, home_query=hq)
    Metrics.counter(NAMESPACE, "band_groups").inc()
    for a, b, d in pairs:
        yield group, a, b, int(d)


class _BandPairs(beam.PTransform):
    """(group, node, hash) -> (group, a, b, d): pairs of one group within k (band keys, GroupByKey,
    popcount verification). ``group`` separates independent searches in one shuffle (video positions)."""

    def __init__(self, plan: neardup.SearchPlan, k: int, is_query: Callable[[Node], bool] | None = None) -> None:
        super().__init__()
        self.plan, self.k, self.is_query = plan, k, is_query

    def expand(self, items):
        return (
            items
            | "BandKeys" >> beam.FlatMap(_band_records, self.plan, self.is_query)
            | "GroupBands" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(_verify, self.plan, self.k, self.is_query)
        )


class HammingEdges(beam.PTransform):
    """(node, 64-bit hash) -> edges (a, b, hamming), a < b, that connect every pair within ``k``.

    Identical hashes collapse to a star first (distance 0), so the edge set is the band-search edges
    between distinct hashes (between their heads) plus m - 1 star edges per hash shared by m nodes:
    the same connected components, and the same closest distance per node, as all pairs within k.
    ``is_query`` selects query mode (pairs need a query side; no star: two reference items with one
    hash are no pair there).
    """

    def __init__(self, k: int, plan: neardup.SearchPlan, is_query: Callable[[Node], bool] | None = None) -> None:
        super().__init__()
        if plan.k < k:
            raise ValueError(f"plan was made for k={plan.k} < {k}: it would miss pairs")
        self.k, self.plan, self.is_query = k, plan, is_query

    def expand(self, items):
        hashed = items | "AsInt" >> beam.MapTuple(lambda node, h: (node, to_int64(h)))
        if self.is_query is None:
            collapsed = hashed | "Identical" >> StarOfIdentical(0)
            heads, star = collapsed.heads, collapsed.star
        else:
            heads, star = hashed, None
        band = (
            heads
            | "Grouped" >> beam.MapTuple(lambda node, h: (None, node, h))
            | "Search" >> _BandPairs(self.plan, self.k, self.is_query)
            | "Edges" >> beam.Map(lambda e: (e[1], e[2], e[3]))
        )
        if star is None:
            return band
        return (star, band) | "AllEdges" >> beam.Flatten()


def _count_positions(kv: tuple[tuple[Node, Node], int], need: int) -> Iterator[Edge]:
    (a, b), n = kv
    if n >= need:
        yield a, b, n


class AlignedHammingEdges(beam.PTransform):
    """(node, [hash per position]) -> edges (a, b, matches) of nodes whose hashes are within ``k`` at
    >= ``need`` aligned positions (``curation.video.video_near_duplicates``' rule).

    One band search per position runs in one shuffle (the position is part of the group key); the
    per-pair position counts are a combine. Identical vectors collapse to a star first.
    """

    def __init__(self, k: int, plan: neardup.SearchPlan, need: int) -> None:
        super().__init__()
        self.k, self.plan, self.need = k, plan, need

    def expand(self, items):
        vectors = items | "AsTuple" >> beam.MapTuple(lambda node, hs: (node, tuple(to_int64(h) for h in hs)))
        # identical vectors match at every position: their star edges carry no count
        collapsed = vectors | "Identical" >> StarOfIdentical(None, counter="identical_vector_edges")
        star = collapsed.star
        positions = collapsed.heads | "Positions" >> beam.FlatMapTuple(
            lambda node, hs: ((p, node, h) for p, h in enumerate(hs)))
        band = (
            positions
            | "Search" >> _BandPairs(self.plan, self.k)
            | "PairOf" >> beam.Map(lambda e: ((e[1], e[2]), 1))
            | "CountPositions" >> beam.CombinePerKey(sum)
            | "Enough" >> beam.FlatMap(_count_positions, self.need)
        )
        return (star, band) | "AllEdges" >> beam.Flatten()


def _hit_rows(kv: tuple[int, dict[str, list]]) -> Iterator[tuple[Node, tuple[Node, int]]]:
    _, grouped = kv
    if not grouped["hit"]:
        return
    d, ref = grouped["hit"][0]
    for node in grouped["nodes"]:
        Metrics.counter(NAMESPACE, "reference_hits").inc()
        yield node, (ref, d)


def _cross_verify(kv: tuple[tuple[Hashable, int], Iterable[tuple]], plan: neardup.SearchPlan, k: int) -> Iterator:
    """Record x reference pairs of one band group, (record hash, (distance, reference id)).

    Only references probe (query mode); a record only has home keys. ``verify_group`` is called
    with the references as 'home' and the records as 'probe', so its probe x home part is exactly
    the record x reference candidates, and record x record pairs (a hot band value of the corpus)
    are never formed.
    """
    (_, key), items = kv
    refs, recs = [], []
    for is_home, node, h in items:
        (recs if node[0] == 0 else refs).append((node, h))
    if not refs or not recs:
        return
    pairs = neardup.verify_group(
        key, [n for n, _ in refs], np.array([h for _, h in refs], dtype=np.int64),
        [n for n, _ in recs], np.array([h for _, h in recs], dtype=np.int64), plan, k)
    for a, b, d in pairs:
        if a[0] != b[0]:  # (0, record hash) < (1, reference id)
            yield a[1], (int(d), b[1])


class NearestReference(beam.PTransform):
    """(records, references), each (node, 64-bit hash) -> (record node, (reference node, hamming)):
    the closest reference within ``k`` of each record that has one (ties: smallest reference id).

    Both sides collapse by hash (a reference hash keeps its smallest id; a record hash is searched
    once), the references are the queries of the band search, the best hit is a per-hash combine
    and it reaches the records through a ``CoGroupByKey`` on the hash.
    """

    def __init__(self, k: int, plan: neardup.SearchPlan) -> None:
        super().__init__()
        if plan.k < k:
            raise ValueError(f"plan was made for k={plan.k} < {k}: it would miss pairs")
        self.k, self.plan = k, plan

    def expand(self, pcolls):
        records, references = pcolls
        by_hash = records | "RecordByHash" >> beam.MapTuple(lambda node, h: (to_int64(h), node))
        rec_items = (
            by_hash
            | "RecordHashes" >> beam.Keys()
            | "DistinctHashes" >> beam.Distinct()
            | "RecordItems" >> beam.Map(lambda h: (None, (0, h), h))
        )
        ref_items = (
            references
            | "RefByHash" >> beam.MapTuple(lambda node, h: (to_int64(h), node))
            | "RefHead" >> beam.CombinePerKey(min)
            | "RefItems" >> beam.MapTuple(lambda h, node: (None, (1, node), h))
        )
        is_query = _is_reference
        hits = (
            (rec_items, ref_items)
            | "Items" >> beam.Flatten()
            | "BandKeys" >> beam.FlatMap(_band_records, self.plan, is_query)
            | "GroupBands" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(_cross_verify, self.plan, self.k)
            | "Best" >> beam.CombinePerKey(min)
        )
        return (
            {"nodes": by_hash, "hit": hits}
            | "HitsByHash" >> beam.CoGroupByKey()
            | "PerRecord" >> beam.FlatMap(_hit_rows)
        )


def _is_reference(node: tuple) -> bool:
    return node[0] == 1


# ----------------------------------------------------------------------------------------------
# 3. connected components from the edges alone


class _UnionFind(beam.CombineFn):
    """Union-find over edges: accumulator {node: parent}; a root is the smallest node of its set
    (the larger root is always linked under the smaller one)."""

    def create_accumulator(self) -> dict:
        return {}

    @staticmethod
    def _find(parent: dict, x: Node) -> Node:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression keeps later finds short
            parent[x], x = root, parent[x]
        return root

    def add_input(self, parent: dict, edge: tuple[Node, Node]) -> dict:
        a, b = self._find(parent, edge[0]), self._find(parent, edge[1])
        if a != b:
            lo, hi = (a, b) if a < b else (b, a)
            parent[hi] = lo
            parent.setdefault(lo, lo)
        return parent

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        accumulators = iter(accumulators)
        out = next(accumulators, None)
        out = {} if out is None else out
        for acc in accumulators:
            for x, p in acc.items():  # each (node, parent) link is an edge of the same component
                self.add_input(out, (x, p))
        return out

    def extract_output(self, parent: dict) -> list[tuple[Node, Node]]:
        return [(x, self._find(parent, x)) for x in list(parent)]


class ConnectedComponents(beam.PTransform):
    """Edges (a, b, ...) -> (node, component id) for every node with an edge; component id = the
    smallest node of the component. The edges alone reach one worker (a lifted combine: partial
    forests per bundle, then one merge), so memory follows the nodes that have an edge; nodes
    without one never appear (they are their own component)."""

    def expand(self, edges):
        return (
            edges
            | "Ends" >> beam.Map(lambda e: (e[0], e[1]))
            | "UnionFind" >> beam.CombineGlobally(_UnionFind())
            | "Labels" >> beam.FlatMap(lambda labels: labels)
            | "Spread" >> beam.Reshuffle()
        )


# ----------------------------------------------------------------------------------------------
# 4. components by key, decisions back by key


class Member(NamedTuple):
    """One node of a component as ``GroupComponents`` hands it over."""

    node: Node
    attrs: Any  # the caller's slim attributes (what its representative rule reads)
    distance: Any  # smallest weight of the node's edges (``with_distance``), else None
    extras: dict  # name -> value (None where the node has none) for each extra input


def _member(kv: tuple[Node, dict[str, list]], extras: Sequence[str]) -> Iterator[tuple[Node, Member]]:
    node, grouped = kv
    if not grouped["attrs"]:
        Metrics.counter(NAMESPACE, "edge_without_node").inc()  # an edge to a node that is not here
        return
    comp = grouped["comp"][0] if grouped["comp"] else node
    dist = grouped["dist"][0] if grouped.get("dist") else None
    extra = {e: (grouped[e][0] if grouped[e] else None) for e in extras}
    for attrs in grouped["attrs"]:  # two records under one id both stay members (as with a plain group)
        yield comp, Member(node, attrs, dist, extra)


def _component(kv: tuple[Node, Iterable[Member]]) -> tuple[Node, list[Member]]:
    comp, members = kv
    members = sorted(members, key=lambda m: m.node)
    Metrics.counter(NAMESPACE, "components").inc()
    if len(members) > 1:
        Metrics.counter(NAMESPACE, "nodes_in_clusters").inc(len(members))
    return comp, members


class GroupComponents(beam.PTransform):
    """{'nodes': (node, attrs), 'edges': (a, b, weight), <extra>: (node, value), ...} ->
    (component id, [Member, ...] sorted by node) for every node, singletons included.

    ``with_distance`` adds each node's smallest edge weight (a per-key combine over the edges).
    Memory per step is one node (the joins) or one component (the last group).
    """

    def __init__(self, with_distance: bool = False) -> None:
        super().__init__()
        self.with_distance = with_distance

    def expand(self, inputs: dict):
        nodes, edges = inputs["nodes"], inputs["edges"]
        extras = sorted(k for k in inputs if k not in ("nodes", "edges"))
        joined = {"attrs": nodes, "comp": edges | "Components" >> ConnectedComponents()}
        if self.with_distance:
            joined["dist"] = (
                edges
                | "EndWeights" >> beam.FlatMap(lambda e: ((e[0], e[2]), (e[1], e[2])))
                | "Closest" >> beam.CombinePerKey(min)
            )
        joined.update({e: inputs[e] for e in extras})
        return (
            joined
            | "JoinNode" >> beam.CoGroupByKey()
            | "ToComponent" >> beam.FlatMap(_member, extras)
            | "GroupComponent" >> beam.GroupByKey()
            | "Members" >> beam.Map(_component)
        )


def _merge(kv: tuple[Node, dict[str, list]], merge: Callable[[dict, Any], Any]) -> Iterator:
    _, grouped = kv
    if not grouped["decision"]:
        Metrics.counter(NAMESPACE, "record_without_decision").inc()
        return
    decision = grouped["decision"][0]
    for rec in grouped["record"]:
        yield merge(rec, decision)


class JoinById(beam.PTransform):
    """{'record': (id, record), 'decision': (id, decision)} -> ``merge(record, decision)`` for each
    record with a decision (a ``CoGroupByKey``; default merge: ``dict(record, **decision)``)."""

    def __init__(self, merge: Callable[[dict, Any], Any] | None = None) -> None:
        super().__init__()
        self.merge = merge or (lambda rec, dec: dict(rec, **dec))

    def expand(self, inputs: dict):
        return (
            {"record": inputs["record"], "decision": inputs["decision"]}
            | "JoinId" >> beam.CoGroupByKey()
            | "Merge" >> beam.FlatMap(_merge, self.merge)
        )
