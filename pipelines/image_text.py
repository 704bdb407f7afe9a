"""The image-caption track as Beam pipelines, one per stage, runnable without Dagster.

    python -m pipelines.image_text --root ./data --stages all
    python -m pipelines.image_text --root gs://bucket/curation --stages phash --partitions drop-0001 \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp

Stages and what they read and write under the storage root (DESIGN.md section 2):

| stage | scope | reads | writes |
|---|---|---|---|
| samples | per drop | landing/image_text/<drop>/ | manifests/image_text_samples/<drop>.parquet |
| phash | per drop | image_text_samples | manifests/image_phash/<drop>.parquet |
| fingerprints | corpus | benchmarks/images/ | manifests/benchmark_fingerprints/all.parquet |
| neardup | corpus | image_phash (all drops), benchmark_fingerprints | manifests/image_neardup_clusters/<drop>.parquet, _pairs.parquet |
| quality | per drop | image_neardup_clusters | manifests/caption_quality/<drop>.parquet |
| clip | per drop | caption_quality | manifests/clip_scores/<drop>.parquet |
| metaclip_counts | corpus | clip_scores (all drops), metadata | manifests/metaclip_entry_counts/all.parquet |
| balance | per drop | clip_scores, entry counts | manifests/metaclip_balanced/<drop>.parquet |
| recaption | per drop | metaclip_balanced | manifests/recaptions/<drop>.parquet (every record; a rejected re-caption keeps the original) |
| shards | corpus | recaptions (all drops) | shards/image_text/<version>/ |

Every rejected record goes to quarantine/<asset>/<drop>.parquet with its stage and reason.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from curation import clip_score, generation, image_dedup, imaging, ingest, metaclip, neardup, phash, shards, storage, text_quality
from curation import recaption as recaption_ops
from pipelines import dedup
from pipelines.generation import EngineSpec, GenerationModelHandler, resolve_spec
from curation.records import content_id, sha256_hex
from pipelines.common import (
    Split,
    Stage,
    StageResult,
    WriteManifest,
    accept,
    content_version,
    counters,
    dead_letter_to_quarantine,
    extend_schema,
    format_exception,
    landing_drops,
    manifest_url,
    quarantine_schema,
    quarantine_url,
    quarantined,
    read_manifests,
    read_schema,
    reject,
    run_pipeline,
    split_dofn,
    write_per_partition,
)

TRACK = "image_text"
STAGES = ("samples", "phash", "fingerprints", "neardup", "quality", "clip", "metaclip_counts", "balance", "recaption", "shards")
ASSET = {  # stage -> asset name (manifest folder)
    "samples": "image_text_samples",
    "phash": "image_phash",
    "fingerprints": "benchmark_fingerprints",
    "neardup": "image_neardup_clusters",
    "quality": "caption_quality",
    "clip": "clip_scores",
    "metaclip_counts": "metaclip_entry_counts",
    "balance": "metaclip_balanced",
    "recaption": "recaptions",
    "shards": "image_text_shards",
}
CORPUS = "all"  # partition name of corpus-wide manifests

SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("partition", pa.string()),
        ("source_key", pa.string()),
        ("uri", pa.string()),
        ("byte_offset", pa.int64()),
        ("byte_size", pa.int64()),
        ("caption", pa.string()),
        ("extra", pa.string()),
        ("sha256", pa.string()),
        ("n_bytes", pa.int64()),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
INGEST_QUARANTINE_SCHEMA = quarantine_schema(SAMPLE_SCHEMA)


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ImageTextSettings:
    """Every knob of the track, with its default. Dagster config and CLI flags map onto it."""

    image_limits: imaging.ImageLimits = field(default_factory=imaging.ImageLimits)
    fetch_limits: ingest.FetchLimits = field(default_factory=ingest.FetchLimits)
    phash_draft: bool = True
    phash_flatten_alpha: bool = True  # composite transparent images onto white before hashing
    hamming_k: int = phash.DEFAULT_THRESHOLD
    benchmark_k: int = phash.DEFAULT_THRESHOLD
    # Accepted for old configs and ignored: run_neardup always runs the distributed dedup
    # (pipelines/dedup.py); the in-memory engine is curation.image_dedup.resolve_clusters.
    neardup_engine: str = "auto"
    caption: text_quality.CaptionQualityConfig = field(default_factory=text_quality.CaptionQualityConfig)
    clip_model: str = "local-dir:models/clip-tiny"
    clip_pretrained: str | None = None
    clip_batch_size: int = 64
    clip_filter: clip_score.ClipFilterConfig = field(default_factory=lambda: clip_score.ClipFilterConfig(keep_top_fraction=0.9))
    metadata_path: str = "models/metaclip/metadata.txt"
    metaclip_t: int | None = None  # None: metaclip.auto_threshold(number of texts)
    metaclip_version: int = 1
    recaption_engine: EngineSpec = field(default_factory=lambda: EngineSpec(
        "vllm", "models/tiny-qwen2_5_vl", options={"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}))
    recaption_sampling: generation.SamplingParams = field(default_factory=lambda: generation.SamplingParams(
        n=1, temperature=0.2, max_tokens=96, seed=0))
    recaption: recaption_ops.RecaptionConfig = field(default_factory=recaption_ops.RecaptionConfig)
    samples_per_shard: int = 10_000
    max_shard_bytes: int = 1 << 30
    dataset: str = "image_text"

    def resolve(self, root: str, path: str) -> str:
        """A model/metadata path: absolute, URL or ``local-dir:`` stay; relative ones live under root."""
        if path.startswith("local-dir:"):
            inner = path[len("local-dir:") :]
            return "local-dir:" + self.resolve(root, inner)
        if "://" in path or path.startswith("/"):
            return path
        return storage.local_path(storage.join(root, path)) or storage.join(root, path)


# ----------------------------------------------------------------------------------------------
# samples: ingest + header validation


def landing_url(root: str, partition: str) -> str:
    return storage.join(root, "landing", TRACK, partition)


def list_partitions(root: str) -> list[str]:
    """Drops present in landing/image_text/, sorted (sort order = precedence order)."""
    return landing_drops(root, TRACK)


def drop_relative_key(source_key: str, drop_url: str, partition: str) -> str:
    """The source key as ``<drop>/<path inside the drop>``: ids must not change when the storage
    root moves (a copied or re-mounted landing area gives the same ids, hence the same draws)."""
    for prefix in (drop_url.rstrip("/") + "/", (storage.local_path(drop_url) or "").rstrip("/") + "/"):
        if prefix != "/" and source_key.startswith(prefix):
            return f"{partition}/{source_key[len(prefix):]}"
    return source_key  # URLs and paths outside the drop stay as they are


class InspectSample(beam.DoFn):
    """Load the bytes of a reference, sniff and validate the header, give it its stable id."""

    def __init__(self, root: str, settings: ImageTextSettings) -> None:
        self.root, self.settings = root, settings

    def process(self, ref: dict):
        part = ref["partition"]
        rec = dict(ref, id=None, sha256=None, n_bytes=None, format=None, width=None, height=None)
        if ref.get("reason"):
            yield reject(rec, TRACK, "samples", ref["reason"], ref.get("error"))
            return
        try:
            data = ingest.load_bytes(ref, self.settings.fetch_limits)
        except ingest.FetchError as e:
            yield reject(rec, TRACK, "samples", e.reason, str(e))
            return
        except (FileNotFoundError, OSError) as e:
            yield reject(rec, TRACK, "samples", "unreadable", format_exception(e))
            return
        digest = sha256_hex(data)
        if ref["uri"].startswith(("http://", "https://")):
            # Fetched bytes are kept once, content-addressed, so later stages never fetch again.
            blob = storage.join(self.root, "cache", "blobs", digest[:2], digest)
            if not storage.exists(blob):
                storage.write_bytes(blob, data)
            rec.update(uri=blob, byte_offset=-1, byte_size=-1)
        info = imaging.inspect_image(data, self.settings.image_limits)
        rec.update(id=content_id(data, drop_relative_key(ref["source_key"], landing_url(self.root, part), part)),
                   sha256=digest, n_bytes=len(data),
                   format=info.format, width=info.oriented_width, height=info.oriented_height)
        if not info.ok:
            yield reject(rec, TRACK, "samples", info.reason, info.error)
            return
        yield accept(rec, TRACK, "samples")


def drop_references(p, root: str, partitions: Sequence[str], settings: ImageTextSettings):  # noqa: ANN001
    """The references of every given drop (each tagged with its drop), spread over workers."""
    per_drop = []
    for i, part in enumerate(partitions):
        sources = ingest.discover(landing_url(root, part))
        per_drop.append(p | f"Sources[{i}]" >> beam.Create(sources)
                        | f"References[{i}]" >> beam.FlatMapTuple(ingest.iter_source)
                        | f"Tag[{i}]" >> beam.Map(lambda ref, part=part: dict(ref, partition=part)))
    return per_drop | "AllDrops" >> beam.Flatten() | "Spread" >> beam.Reshuffle()


# ----------------------------------------------------------------------------------------------
# phash


class PHashBatch(beam.DoFn):
    """Decode (JPEG draft mode) and hash a batch; undecodable images go to quarantine."""

    def __init__(self, settings: ImageTextSettings) -> None:
        self.settings = settings

    def process(self, batch: list[dict]):
        datas, errors = [], {}
        for i, rec in enumerate(batch):
            try:
                datas.append(ingest.load_bytes(rec, self.settings.fetch_limits))
            except (OSError, ingest.FetchError) as e:
                datas.append(b"")
                errors[i] = ("unreadable", format_exception(e))
        hashes, hash_errors = phash.phash_many(datas, draft=self.settings.phash_draft,
                                                flatten_alpha=self.settings.phash_flatten_alpha)
        for i, err in enumerate(hash_errors):
            if err is not None:
                errors.setdefault(i, ("decode_error", err))
        for i, rec in enumerate(batch):
            if i in errors:
                yield reject(rec, TRACK, "phash", *errors[i])
            else:
                yield accept(dict(rec, phash=int(hashes[i])), TRACK, "phash")


class ComputePHash(beam.PTransform):
    def __init__(self, settings: ImageTextSettings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, records):
        batches = records | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
        return split_dofn(batches, "Hash", PHashBatch(self.settings))


PHASH_FIELDS = [("phash", pa.uint64())]


# ----------------------------------------------------------------------------------------------
# benchmark fingerprints (decontamination)


def benchmark_records(root: str, folder: str | None = None) -> list[dict]:
    """References to the benchmark images (any image file under benchmarks/images/)."""
    url = folder or storage.join(root, "benchmarks", "images")
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return []
    out = []
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
    for p in sorted(fs.find(path)):
        if p.rsplit(".", 1)[-1].lower() in ingest.IMAGE_EXTS:
            uri = protocol + p if protocol and not p.startswith(protocol) else p
            out.append({"id": "bench:" + p.rsplit("/", 1)[-1], "uri": uri, "byte_offset": -1, "byte_size": -1})
    return out


FINGERPRINT_SCHEMA = pa.schema([("id", pa.string()), ("uri", pa.string()), ("byte_offset", pa.int64()),
                                ("byte_size", pa.int64()), ("phash", pa.uint64())])


# ----------------------------------------------------------------------------------------------
# neardup: exact duplicates, pHash near-duplicates, benchmark contamination (corpus-wide)

NEARDUP_FIELDS = [("cluster_id", pa.string()), ("cluster_size", pa.int32())]
NEARDUP_Q_FIELDS = NEARDUP_FIELDS + [("dup_of", pa.string()), ("hamming", pa.int32())]


class ExactRepresentative(beam.CombineFn):
    """Per sha256: the representative (smallest ``image_dedup.precedence``) and the group size; a
    liftable combine, so 10^5 copies of one blank image never sit in one list."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, acc, rec: dict):
        best, n = acc
        cand = (image_dedup.precedence(rec), rec["id"])
        return (cand if best is None or cand < best else best), n + 1

    def merge_accumulators(self, accs):
        best, n = None, 0
        for b, m in accs:
            n += m
            if b is not None and (best is None or b < best):
                best = b
        return best, n

    def extract_output(self, acc):
        best, n = acc
        return best[1], n


def exact_decisions(key_and_group) -> Iterable[dict]:
    """One sha256 group (records, and its representative from ExactRepresentative) -> the representative
    (main) and the others (tagged 'exact', as ``image_dedup.decide_exact`` marks them). The records are
    iterated once, never listed: a runner may page a hot group from its shuffle."""
    _, g = key_and_group
    rep_id, n = next(iter(g["rep"]))
    for rec in g["records"]:
        if rec["id"] == rep_id:
            yield rec
        else:
            yield beam.pvalue.TaggedOutput("exact", dict(rec, _decision="exact_duplicate", dup_of=rep_id, hamming=0,
                                                         cluster_id=rep_id, cluster_size=n))


def neardup_plan(n_records: int, k: int) -> neardup.SearchPlan:
    """The banded plan ``run_neardup`` runs over ``n_records`` hashes at distance k (the asset shows it)."""
    return dedup.search_plan(n_records, k)


class NearDupPairs(beam.PTransform):
    """Near-dup edges (id_a, id_b, hamming) within k among hashed records: ``dedup.HammingEdges``
    (identical pHashes become a star of distance-0 edges; the rest come from band keys, a
    GroupByKey and popcount verification). ``query_prefix``: query mode, pairs with a side whose id
    has the prefix. ``engine`` is accepted for old callers; every engine runs this distributed search.
    """

    def __init__(self, k: int, n_estimate: int, engine: str = "auto", query_prefix: str | None = None) -> None:
        super().__init__()
        self.k, self.query_prefix = k, query_prefix
        self.plan = neardup_plan(n_estimate, k)

    def expand(self, records):
        qp = self.query_prefix
        is_query = None if qp is None else (lambda node: node.startswith(qp))
        return (
            records
            | "Hashes" >> beam.Map(lambda r: (r["id"], dedup.to_int64(r["phash"])))
            | "Edges" >> dedup.HammingEdges(self.k, self.plan, is_query)
        )


def _decide_component(kv) -> Iterable[tuple[str, dict]]:  # noqa: ANN001
    """One pHash component (``dedup.Member``s: attrs = the ``precedence`` key, extras['bench'] = the
    closest benchmark hit) -> (id, decision) by ``image_dedup.decide_cluster``."""
    _, members = kv
    ids = [m.node for m in members]
    decisions = image_dedup.decide_cluster(ids, [m.attrs for m in members], [m.distance for m in members],
                                           [m.extras.get("bench") for m in members])
    for node, dec in zip(ids, decisions):
        Metrics.counter(TRACK, "neardup_kept" if dec["_decision"] == "keep" else f"neardup_drop_{dec['_decision']}").inc()
        yield node, dec


# ----------------------------------------------------------------------------------------------
# caption quality


class CaptionQuality(beam.DoFn):
    def __init__(self, config: text_quality.CaptionQualityConfig) -> None:
        self.config = config

    def process(self, rec: dict):
        keep, reason = text_quality.check_caption(rec.get("caption") or "", self.config)
        stats = text_quality.caption_stats(rec.get("caption") or "")
        out = dict(rec, caption_stats=json.dumps(stats, sort_keys=True, default=float), caption_lang=stats.get("lang"))
        yield accept(out, TRACK, "quality") if keep else reject(out, TRACK, "quality", reason)


QUALITY_FIELDS = [("caption_stats", pa.string()), ("caption_lang", pa.string())]


# ----------------------------------------------------------------------------------------------
# CLIP score


class ClipScoreBatch(beam.DoFn):
    """Scores batches with one open_clip model per worker (loaded in setup, never in __init__)."""

    def __init__(self, model: str, pretrained: str | None, batch_size: int, limits: imaging.ImageLimits,
                 fetch_limits: ingest.FetchLimits) -> None:
        self.model, self.pretrained, self.batch_size = model, pretrained, batch_size
        self.limits, self.fetch_limits = limits, fetch_limits
        self.scorer: clip_score.ClipScorer | None = None

    def setup(self) -> None:
        self.scorer = clip_score.ClipScorer(self.model, self.pretrained, batch_size=self.batch_size)

    def process(self, batch: list[dict]):
        images, texts, ok = [], [], []
        for rec in batch:
            try:
                img, info = imaging.decode_image(ingest.load_bytes(rec, self.fetch_limits), self.limits)
            except (OSError, ingest.FetchError) as e:
                img, info = None, None
                err = format_exception(e)
            if img is None:
                reason = info.reason if info is not None else "unreadable"
                yield reject(rec, TRACK, "clip", reason or "decode_error", info.error if info is not None else err)
                continue
            images.append(img)
            texts.append(rec.get("caption") or "")
            ok.append(rec)
        if not ok:
            return
        assert self.scorer is not None
        scores = self.scorer.score(images, texts)
        for rec, s in zip(ok, scores.tolist()):
            yield dict(rec, clip_score=float(s))


def _apply_clip_threshold(rec: dict, thresholds: dict[str, float]):
    threshold = thresholds.get(rec["partition"])
    keep, reason = clip_score.clip_verdict(rec["clip_score"], threshold)
    if keep:
        yield accept(rec, TRACK, "clip")
    else:
        yield reject(rec, TRACK, "clip", reason, f"score {rec['clip_score']:.4f} < {threshold:.4f}")


class ScoreHistogram(beam.CombineFn):
    """Counts per monotone score bucket (``clip_score.score_bucket``): a small, liftable accumulator."""

    def create_accumulator(self) -> dict[int, int]:
        return {}

    def add_input(self, acc: dict[int, int], score: float) -> dict[int, int]:
        b = clip_score.score_bucket(score)
        acc[b] = acc.get(b, 0) + 1
        return acc

    def merge_accumulators(self, accs) -> dict[int, int]:  # noqa: ANN001
        out: dict[int, int] = {}
        for acc in accs:
            for b, c in acc.items():
                out[b] = out.get(b, 0) + c
        return out

    def extract_output(self, acc: dict[int, int]) -> dict[int, int]:
        return acc


class ValueCounts(beam.CombineFn):
    """value -> count of the scores inside one drop's boundary bucket."""

    def create_accumulator(self) -> dict[float, int]:
        return {}

    def add_input(self, acc: dict[float, int], value: float) -> dict[float, int]:
        acc[value] = acc.get(value, 0) + 1
        return acc

    merge_accumulators = ScoreHistogram.merge_accumulators

    def extract_output(self, acc: dict[float, int]) -> dict[float, int]:
        return acc


class TopFractionThresholds(beam.PTransform):
    """Scored records -> (drop, threshold) per drop, exactly ``clip_score.threshold_for`` of that drop's
    scores, from two combiners (bucket histogram, then the values of the boundary bucket): no worker
    ever holds a drop's scores."""

    def __init__(self, config: clip_score.ClipFilterConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, scored):
        cfg = self.config
        scores = scored | "Scores" >> beam.Map(lambda r: (r["partition"], float(r["clip_score"])))
        hists = scores | "Histogram" >> beam.CombinePerKey(ScoreHistogram())

        def boundary(part_hist):  # noqa: ANN001
            part, hist = part_hist
            n_keep = clip_score.keep_count(sum(hist.values()), cfg)
            bucket, rank = clip_score.boundary_bucket(hist, n_keep)
            return part, (bucket, rank)

        # small: one (bucket, rank) per drop, the only side input of the threshold steps below
        bounds = hists | "Boundary" >> beam.Map(boundary)
        in_bucket = scores | "InBoundary" >> beam.Filter(
            lambda ps, b: ps[0] in b and clip_score.score_bucket(ps[1]) == b[ps[0]][0], beam.pvalue.AsDict(bounds))
        return (in_bucket
                | "BoundaryValues" >> beam.CombinePerKey(ValueCounts())
                | "Threshold" >> beam.Map(lambda pv, b: (pv[0], clip_score.kth_largest(pv[1], b[pv[0]][1])),
                                          beam.pvalue.AsDict(bounds)))


def clip_threshold_url(root: str, partition: str) -> str:
    """Where the clip stage records the threshold it applied to a drop (read back into StageResult.plan)."""
    return storage.join(root, "manifests", ASSET["clip"], f"{partition}.threshold.json")


class ClipScoreFilter(beam.PTransform):
    """Score every record, then keep those at or above their drop's threshold (absolute, or the score of
    the last kept record under ``keep_top_fraction``, per drop)."""

    def __init__(self, settings: ImageTextSettings, model: str, pretrained: str | None, root: str | None = None) -> None:
        super().__init__()
        self.settings, self.model, self.pretrained, self.root = settings, model, pretrained, root

    def expand(self, records):
        s = self.settings
        # full batches: the scorer pads every forward pass to clip_batch_size rows (scores that do not
        # depend on the batch), so a short batch would only cost padding
        batches = records | "Batch" >> beam.BatchElements(min_batch_size=s.clip_batch_size, max_batch_size=s.clip_batch_size)
        scored, failed = split_dofn(
            batches, "Score", ClipScoreBatch(self.model, self.pretrained, s.clip_batch_size, s.image_limits, s.fetch_limits))
        cfg = s.clip_filter
        if cfg.min_score is None and cfg.keep_top_fraction is not None:
            thresholds = scored | "Thresholds" >> TopFractionThresholds(cfg)
        else:
            # absolute (or no) threshold: the same for every drop, known before any score
            fixed = None if cfg.min_score is None else float(cfg.min_score)
            thresholds = (scored | "Drops" >> beam.Map(lambda r: (r["partition"], None)) | "Distinct" >> beam.Distinct()
                          | "Fixed" >> beam.Map(lambda kv: (kv[0], fixed)))
        # small: one threshold per drop feeds the Filter's AsDict side input
        if self.root is not None:
            root = self.root
            thresholds | "RecordThresholds" >> beam.Map(
                lambda pt: storage.write_json(clip_threshold_url(root, pt[0]), {"partition": pt[0], "threshold": pt[1]}))
        filtered = scored | "Filter" >> beam.FlatMap(_apply_clip_threshold, beam.pvalue.AsDict(thresholds)).with_outputs(
            "quarantine", main="ok")
        quarantine = (failed, filtered.quarantine) | "Quarantine" >> beam.Flatten()
        return filtered.ok, quarantine


CLIP_FIELDS = [("clip_score", pa.float32())]


# ----------------------------------------------------------------------------------------------
# MetaCLIP


class MatchEntries(beam.DoFn):
    """Matched metadata entries per caption (the Aho-Corasick automaton is built in setup)."""

    def __init__(self, metadata_path: str) -> None:
        self.metadata_path = metadata_path
        self.matcher: metaclip.Matcher | None = None

    def setup(self) -> None:
        self.matcher = metaclip.Matcher(metaclip.load_metadata(self.metadata_path))

    def process(self, rec: dict):
        assert self.matcher is not None
        yield rec, self.matcher.match(rec.get("caption") or "")


class CountEntries(beam.CombineFn):
    """Corpus-wide match counts per entry, plus the number of texts (mergeable partials)."""

    def create_accumulator(self):
        return {}, 0

    def add_input(self, acc, matched):
        counts, n = acc
        for e in matched:
            counts[e] = counts.get(e, 0) + 1
        return counts, n + 1

    def merge_accumulators(self, accs):
        total, n = {}, 0
        for counts, m in accs:
            n += m
            for e, c in counts.items():
                total[e] = total.get(e, 0) + c
        return total, n

    def extract_output(self, acc):
        return acc


COUNTS_SCHEMA = pa.schema([("entry_index", pa.int32()), ("entry", pa.string()), ("count", pa.int64())])


def balance_record(rec_and_matched: tuple[dict, list[int]], probs: np.ndarray, entries: list[str], version: int):
    rec, matched = rec_and_matched
    keep, reason = metaclip.balance_decision(rec["id"], matched, probs, version=version)
    out = dict(rec, metaclip_entries=[entries[i] for i in matched])
    yield accept(out, TRACK, "balance") if keep else reject(out, TRACK, "balance", reason)


BALANCE_FIELDS = [("metaclip_entries", pa.list_(pa.string()))]


# ----------------------------------------------------------------------------------------------
# Stage runners: each builds and runs one Beam pipeline.


def _read(p, url: str, label: str):  # noqa: ANN001
    return p | label >> beam.io.ReadFromParquet(url)


def _write_split(ok, bad, root: str, asset: str, partition: str, schema: pa.Schema, label: str = "") -> None:  # noqa: ANN001
    ok | f"{label}WriteManifest" >> WriteManifest(manifest_url(root, asset, partition), schema)
    bad | f"{label}WriteQuarantine" >> WriteManifest(quarantine_url(root, asset, partition), quarantine_schema(schema))


# Per-drop stages: each declared once; ``run_<stage>(root, drops, settings)`` runs it over one drop or
# many in ONE Beam job (a Dagster backfill of many drops is one job, with one model load per worker).


def _samples_schema(root: str, partitions: Sequence[str]) -> pa.Schema:
    return SAMPLE_SCHEMA


SAMPLES = Stage(TRACK, "samples", ASSET["samples"], None, (), lambda root, s: Split("Inspect", InspectSample(root, s)),
                source=drop_references, schema=_samples_schema)
PHASH = Stage(TRACK, "phash", ASSET["phash"], ASSET["samples"], tuple(PHASH_FIELDS), lambda root, s: ComputePHash(s))


QUALITY = Stage(TRACK, "quality", ASSET["quality"], ASSET["neardup"], tuple(QUALITY_FIELDS),
                lambda root, s: Split("Check", CaptionQuality(s.caption)))


def clip_model_paths(root: str, settings: ImageTextSettings) -> tuple[str, str | None]:
    """(open_clip model, checkpoint) with relative local paths resolved under the root."""
    model = settings.resolve(root, settings.clip_model) if settings.clip_model.startswith("local-dir:") else settings.clip_model
    pretrained = settings.resolve(root, settings.clip_pretrained) if settings.clip_pretrained else None
    return model, pretrained


def _clip_plan(root: str, partitions: Sequence[str], settings: ImageTextSettings) -> dict:
    thresholds = {}
    for part in partitions:
        url = clip_threshold_url(root, part)
        thresholds[part] = storage.read_json(url)["threshold"] if storage.exists(url) else None
    model, pretrained = clip_model_paths(root, settings)
    cfg = settings.clip_filter
    return {"model": model, "pretrained": pretrained, "keep_top_fraction": cfg.keep_top_fraction,
            "min_score": cfg.min_score, "thresholds": thresholds}


CLIP = Stage(TRACK, "clip", ASSET["clip"], ASSET["quality"], tuple(CLIP_FIELDS),
             lambda root, s: ClipScoreFilter(s, *clip_model_paths(root, s), root=root), plan=_clip_plan)


run_samples = SAMPLES.runner("Ingest + header validation of the given drops.")


run_phash = PHASH.runner("pHash of every valid image of the given drops.")


run_quality = QUALITY.runner("Caption quality filters on the near-dup survivors of the given drops.")


run_clip = CLIP.runner("CLIP scores and the per-drop threshold; ``plan['thresholds']`` holds the threshold each drop got.")


def run_fingerprints(root: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None,
                     folder: str | None = None):  # noqa: ANN001
    refs = benchmark_records(root, folder)

    def build(p):  # noqa: ANN001
        ok, bad = (p | "Benchmarks" >> beam.Create(refs)) | "Hash" >> ComputePHash(settings)
        _write_split(ok, bad, root, ASSET["fingerprints"], CORPUS, FINGERPRINT_SCHEMA)

    result = run_pipeline(argv, build, test_pipeline)
    return StageResult.corpus(TRACK, "fingerprints", ASSET["fingerprints"], root, (), result, {"images": len(refs)})


def _row_count(url: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def run_neardup(root: str, partitions: Sequence[str], settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    """Exact + near-dup + benchmark decisions over every drop; one manifest and quarantine per drop."""
    srcs = [manifest_url(root, ASSET["phash"], p) for p in partitions]
    missing = [s for s in srcs if not storage.exists(s)]
    if missing:
        raise FileNotFoundError(f"neardup: image_phash manifests missing: {missing}")
    schema = extend_schema(read_schema(srcs[0]), NEARDUP_FIELDS) if srcs else SAMPLE_SCHEMA
    qschema = extend_schema(schema, NEARDUP_Q_FIELDS)
    bench_url = manifest_url(root, ASSET["fingerprints"], CORPUS)
    n_estimate = sum(_row_count(s) for s in srcs)
    k, bk = settings.hamming_k, settings.benchmark_k
    plan = neardup_plan(n_estimate, k)
    has_bench = storage.exists(bench_url)
    bench_plan = dedup.search_plan(n_estimate, bk, n_queries=_row_count(bench_url)) if has_bench else None

    def build(p):  # noqa: ANN001
        reads = [_read(p, s, f"Read{i}") for i, s in enumerate(srcs)]
        records = reads | "Corpus" >> beam.Flatten()
        by_sha = records | "BySha" >> beam.Map(lambda r: (r["sha256"], r))
        reps = by_sha | "ExactRepresentatives" >> beam.CombinePerKey(ExactRepresentative())
        exact = ({"records": by_sha, "rep": reps} | "GroupSha" >> beam.CoGroupByKey()
                 | "ExactDedup" >> beam.FlatMap(exact_decisions).with_outputs("exact", main="unique"))
        unique = exact.unique
        # The distributed dedup (pipelines/dedup.py): edges, components of the edges alone, one
        # decision per component from slim attributes, joined back to the records by id.
        hashes = unique | "Hashes" >> beam.Map(lambda r: (r["id"], dedup.to_int64(r["phash"])))
        pairs = hashes | "NearPairs" >> dedup.HammingEdges(k, plan)
        parts_in = {"nodes": unique | "Ranks" >> beam.Map(lambda r: (r["id"], image_dedup.precedence(r))), "edges": pairs}
        if has_bench:
            bench = _read(p, bench_url, "ReadBench") | "BenchHashes" >> beam.Map(lambda r: (r["id"], dedup.to_int64(r["phash"])))
            hits = (hashes, bench) | "BenchHits" >> dedup.NearestReference(bk, bench_plan)
            parts_in["bench"] = hits
            bench_pairs = hits | "BenchEdges" >> beam.MapTuple(lambda i, hit: (min(i, hit[0]), max(i, hit[0]), hit[1]))
        else:
            bench_pairs = p | "NoBench" >> beam.Create([])
        decisions = (parts_in | "Clusters" >> dedup.GroupComponents(with_distance=True)
                     | "Decide" >> beam.FlatMap(_decide_component))
        decided = ({"record": unique | "ById" >> beam.Map(lambda r: (r["id"], r)), "decision": decisions}
                   | "JoinDecisions" >> dedup.JoinById())
        routed = ((decided, exact.exact) | "AllDecisions" >> beam.Flatten()
                  | "Route" >> beam.FlatMap(_route_decision).with_outputs("quarantine", main="ok"))
        write_per_partition(routed.ok, routed.quarantine, root, ASSET["neardup"], partitions, schema,
                            qschema=quarantine_schema(qschema))
        pair_schema = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("hamming", pa.int32()), ("kind", pa.string())])
        tagged = (
            (pairs | "TagNear" >> beam.Map(lambda e: {"id_a": e[0], "id_b": e[1], "hamming": e[2], "kind": "near"}),
             bench_pairs | "TagBench" >> beam.Map(lambda e: {"id_a": e[0], "id_b": e[1], "hamming": e[2], "kind": "benchmark"}))
            | "AllPairs" >> beam.Flatten()
        )
        tagged | "WritePairs" >> WriteManifest(manifest_url(root, ASSET["neardup"], "_pairs"), pair_schema)

    result = run_pipeline(argv, build, test_pipeline)
    parts = tuple(partitions)
    return StageResult(TRACK, "neardup", ASSET["neardup"], parts, {q: manifest_url(root, ASSET["neardup"], q) for q in parts},
                       {q: quarantine_url(root, ASSET["neardup"], q) for q in parts}, counters(result, TRACK),
                       {"records": n_estimate, "hamming_k": k, "search_plan": plan.describe(), "benchmark_k": bk,
                        "benchmark_plan": bench_plan.describe() if bench_plan is not None else None})


def _route_decision(r: dict):
    """A record with its near-dup decision -> kept, or quarantined with the decision as the reason."""
    if r["_decision"] == "keep":
        yield accept(r, TRACK, "neardup")
    else:
        yield reject(r, TRACK, "neardup", r["_decision"], f"duplicate of {r['dup_of']} (hamming {r['hamming']})")


def run_metaclip_counts(root: str, partitions: Sequence[str], settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    srcs = [manifest_url(root, ASSET["clip"], p) for p in partitions]
    metadata_path = settings.resolve(root, settings.metadata_path)
    entries = metaclip.load_metadata(metadata_path)

    def build(p):  # noqa: ANN001
        counted = (
            read_manifests(p, srcs, "Read")
            | "Match" >> beam.ParDo(MatchEntries(metadata_path))
            | "Matched" >> beam.MapTuple(lambda rec, m: m)
            | "Count" >> beam.CombineGlobally(CountEntries())
        )

        def rows(acc):  # noqa: ANN001
            counts, _n = acc
            return [{"entry_index": int(i), "entry": entries[i], "count": int(c)} for i, c in sorted(counts.items())]

        (counted | "Rows" >> beam.FlatMap(rows)
         | "Write" >> WriteManifest(manifest_url(root, ASSET["metaclip_counts"], CORPUS), COUNTS_SCHEMA))
        counted | "Summary" >> beam.Map(lambda acc: storage.write_json(
            storage.join(root, "manifests", ASSET["metaclip_counts"], "summary.json"),
            {"n_texts": acc[1], "n_entries_matched": len(acc[0]), "metadata": metadata_path,
             "metadata_version": metaclip.metadata_version(entries)}))

    result = run_pipeline(argv, build, test_pipeline)
    t, n = metaclip_threshold(root, settings)
    return StageResult.corpus(TRACK, "metaclip_counts", ASSET["metaclip_counts"], root, partitions, result,
                              {"metadata": metadata_path, "entries": len(entries), "n_texts": n, "t": int(t)})


def metaclip_threshold(root: str, settings: ImageTextSettings) -> tuple[int, int]:
    """(t, number of texts) used for balancing: the configured t or the auto-scaled one."""
    summary = storage.read_json(storage.join(root, "manifests", ASSET["metaclip_counts"], "summary.json"))
    n = int(summary["n_texts"])
    return (settings.metaclip_t if settings.metaclip_t is not None else metaclip.auto_threshold(n)), n


class Balance(beam.PTransform):
    """MetaCLIP balancing against the corpus entry counts (a per-entry array: small, never per record)."""

    def __init__(self, root: str, settings: ImageTextSettings) -> None:
        super().__init__()
        counts_url = manifest_url(root, ASSET["metaclip_counts"], CORPUS)
        if not storage.exists(counts_url):
            raise FileNotFoundError(f"balance: entry counts missing: {counts_url} (materialize metaclip_entry_counts first)")
        self.metadata_path = settings.resolve(root, settings.metadata_path)
        self.entries = metaclip.load_metadata(self.metadata_path)
        counts = np.zeros(len(self.entries), dtype=np.int64)
        for row in storage.read_records(counts_url):
            counts[row["entry_index"]] = row["count"]
        t, _ = metaclip_threshold(root, settings)
        self.probs = metaclip.entry_probabilities(counts, t)
        self.version = settings.metaclip_version

    def expand(self, records):
        r = (records
             | "Match" >> beam.ParDo(MatchEntries(self.metadata_path))
             | "Decide" >> beam.FlatMap(balance_record, self.probs, self.entries, self.version).with_outputs("quarantine", main="ok"))
        return r.ok, r.quarantine


def _balance_plan(root: str, partitions: Sequence[str], settings: ImageTextSettings) -> dict:
    t, n = metaclip_threshold(root, settings)
    return {"t": int(t), "n_texts": n, "version": settings.metaclip_version}


BALANCE = Stage(TRACK, "balance", ASSET["balance"], ASSET["clip"], tuple(BALANCE_FIELDS), lambda root, s: Balance(root, s),
                plan=_balance_plan)


run_balance = BALANCE.runner("MetaCLIP balancing of the given drops (needs metaclip_entry_counts of the whole corpus).")


RECAPTION_FIELDS = [("recaption", pa.string()), ("recaption_status", pa.string()), ("recaption_model", pa.string()),
                    ("recaption_consistency", pa.float32())]


def recaption_request(rec: dict, fetch_limits: ingest.FetchLimits) -> tuple[dict, generation.GenerationRequest]:
    """(record, the VLM request for it: its image and its original caption as the prior). The record
    rides along as the key of a KeyedModelHandler, so the answer needs no join."""
    image = ingest.load_bytes(rec, fetch_limits)
    return rec, generation.GenerationRequest(messages=recaption_ops.messages_for(rec["caption"] or "", image), request_id=rec["id"])


def attach_recaption(keyed, config: recaption_ops.RecaptionConfig) -> dict:  # noqa: ANN001
    """Record + re-caption columns: the new caption when it passes the checks, else its reason.

    Not a drop: a rejected re-caption keeps the record with its original caption, counted as
    ``recaption_rejected_<reason>``."""
    rec, pr = keyed
    result: generation.GenerationResult = pr.inference
    comp = result.completions[0] if result.completions else None
    text = recaption_ops.clean(comp.text) if comp else ""
    verdict = recaption_ops.check_recaption(rec["caption"] or "", text, comp.finish_reason if comp else None, config,
                                            error=result.error or (None if comp else "no completion"))
    Metrics.counter(TRACK, "recaption_kept" if verdict.keep else f"recaption_rejected_{verdict.reason}").inc()
    cons = recaption_ops.consistency(rec["caption"] or "", text) if text else None
    return dict(rec, recaption=text if verdict.keep else None, recaption_status="ok" if verdict.keep else verdict.reason,
                recaption_model=result.model, recaption_consistency=cons)


class Recaption(beam.PTransform):
    """Altogether-style re-captioning through RunInference: one engine per worker for all drops."""

    def __init__(self, root: str, settings: ImageTextSettings) -> None:
        super().__init__()
        self.settings = settings
        self.handler = KeyedModelHandler(GenerationModelHandler(resolve_spec(root, settings.recaption_engine),
                                                                settings.recaption_sampling, max_batch_size=32))

    def expand(self, records):
        s = self.settings
        requests, dead = records | "Requests" >> beam.Map(recaption_request, s.fetch_limits).with_exception_handling()
        unreadable = dead | "Unreadable" >> beam.FlatMap(dead_letter_to_quarantine("recaption"))
        out = requests | "Generate" >> RunInference(self.handler) | "Attach" >> beam.Map(attach_recaption, s.recaption)
        return out, unreadable


RECAPTION = Stage(TRACK, "recaption", ASSET["recaption"], ASSET["balance"], tuple(RECAPTION_FIELDS),
                  lambda root, s: Recaption(root, s),
                  plan=lambda root, parts, s: {"engine": s.recaption_engine.kind, "model": resolve_spec(root, s.recaption_engine).model})


run_recaption = RECAPTION.runner("""Re-caption every balanced record of the given drops (a record is dropped only if its image
    cannot be read any more; a rejected re-caption keeps the original).""")


def _sample_for_shard(rec: dict, fetch_limits: ingest.FetchLimits) -> shards.Sample | shards.Failure:
    """The shard sample of a record, its image loaded from the reference; a Failure (counted by reason in
    the shard's stats) when the bytes cannot be read."""
    try:
        data = ingest.load_bytes(rec, fetch_limits)
    except ingest.FetchError as e:
        return shards.Failure(rec["id"], e.reason)
    except FileNotFoundError:
        return shards.Failure(rec["id"], "file_not_found")
    except OSError:
        return shards.Failure(rec["id"], "read_error")
    return _shard_sample(rec, data)


def _shard_sample_bytes(rec: dict) -> int:
    """Tar bytes of a record's sample, the image counted from the manifest's n_bytes (not loaded)."""
    n_image = rec.get("n_bytes") or rec.get("byte_size") or 0
    return shards.sample_bytes(_shard_sample(rec, b"")) - shards.member_bytes(0) + shards.member_bytes(int(n_image))


def _shard_sample(rec: dict, data: bytes) -> shards.Sample:
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(rec["format"], rec["format"])
    meta = {
        "id": rec["id"], "caption": rec["caption"], "source_key": rec["source_key"], "partition": rec["partition"],
        "width": rec["width"], "height": rec["height"], "sha256": rec["sha256"], "phash": f"{int(rec['phash']):016x}",
        "clip_score": rec.get("clip_score"), "metaclip_entries": list(rec.get("metaclip_entries") or []),
    }
    for col in ("recaption", "recaption_model", "recaption_status"):
        if rec.get(col):
            meta[col] = rec[col]
    files = {ext: data, "txt": (rec.get("recaption") or rec["caption"]).encode("utf-8"),
             "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")}
    if rec.get("recaption"):
        files["original.txt"] = rec["caption"].encode("utf-8")  # txt holds the re-caption, the original stays
    return shards.Sample(key=rec["id"], fields=files, metadata={**meta, "recaption": meta.get("recaption"),
                                                                 "recaption_model": meta.get("recaption_model"),
                                                                 "recaption_status": meta.get("recaption_status")})


SHARD_METADATA_SCHEMA = pa.schema([
    ("id", pa.string()), ("caption", pa.string()), ("source_key", pa.string()), ("partition", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string()), ("phash", pa.string()),
    ("clip_score", pa.float32()), ("metaclip_entries", pa.list_(pa.string())),
    ("recaption", pa.string()), ("recaption_model", pa.string()), ("recaption_status", pa.string()),
])


def run_shards(root: str, partitions: Sequence[str], settings: ImageTextSettings, upstream: str = ASSET["recaption"],
               argv: Sequence[str] = (), test_pipeline=None) -> shards.ShardIndex:  # noqa: ANN001
    """Write the shard set of every accepted sample, sorted by id (identical bytes on a re-run).

    Only references travel through the pipeline until here; this is where image bytes are copied.
    Returns the shard index.
    """
    srcs = [manifest_url(root, upstream, p) for p in partitions]
    missing = [s for s in srcs if not storage.exists(s)]
    if missing:
        raise FileNotFoundError(f"shards: upstream manifests missing: {missing}")
    version = content_version(srcs, settings.dataset, settings.samples_per_shard, settings.max_shard_bytes)
    out_url = storage.join(root, "shards", settings.dataset, version)
    lineage = shards.input_lineage(srcs, upstream_asset=upstream)
    import functools

    from pipelines.shards import ShardSource, WriteShards, read_manifests

    source = ShardSource(functools.partial(_sample_for_shard, fetch_limits=settings.fetch_limits), size=_shard_sample_bytes)

    def build(p):  # noqa: ANN001
        # one writer per shard loads its images; the records travel as references until then
        (read_manifests(p, srcs)
         | "Shards" >> WriteShards(out_url, dataset_name=settings.dataset, metadata_schema=SHARD_METADATA_SCHEMA,
                                   source=source, lineage=lineage, samples_per_shard=settings.samples_per_shard,
                                   max_shard_bytes=settings.max_shard_bytes, publish_root=root))

    run_pipeline(argv, build, test_pipeline)
    return shards.read_index(out_url)


# ----------------------------------------------------------------------------------------------
# CLI


def ensure_defaults(root: str, settings: ImageTextSettings, stages: Sequence[str]) -> None:
    """Build the default tiny CLIP model and MetaCLIP metadata when a stage needs them and they are missing."""
    from curation.models import build_tiny_clip

    if "clip" in stages and settings.clip_model == ImageTextSettings.clip_model:
        path = settings.resolve(root, settings.clip_model)[len("local-dir:"):]
        if not storage.exists(storage.join(path, "open_clip_config.json")):
            logging.info("building the tiny random-init CLIP model at %s (set --clip-model for a real one)", path)
            build_tiny_clip(path)
    if "recaption" in stages and settings.recaption_engine == ImageTextSettings().recaption_engine:
        from curation.models import build_tiny_qwen2_5_vl

        path = storage.local_path(storage.join(root, settings.recaption_engine.model))
        if path and not storage.exists(storage.join(path, "config.json")):
            logging.info("building the tiny random-init Qwen2.5-VL at %s (set a real VLM for real captions)", path)
            build_tiny_qwen2_5_vl(path)
    if ("metaclip_counts" in stages or "balance" in stages) and not storage.exists(settings.resolve(root, settings.metadata_path)):
        path = settings.resolve(root, settings.metadata_path)
        logging.info("building the default MetaCLIP metadata at %s", path)
        sources = metaclip.metadata_sources()
        metaclip.save_metadata(path, metaclip.merge_entries(s.entries for s in sources), sources)


def run(argv: Sequence[str] | None = None, test_pipeline=None) -> None:  # noqa: ANN001
    """Run stages of the track from the command line (the same code Dagster's assets call)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.image_text", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="./data", help="storage root: local path or fsspec URL (default ./data)")
    parser.add_argument("--stages", default="all", help=f"comma-separated stages, or 'all': {','.join(STAGES)}")
    parser.add_argument("--partitions", default="", help="comma-separated drops under landing/image_text/ (default: all)")
    parser.add_argument("--hamming-k", type=int, default=phash.DEFAULT_THRESHOLD, help="near-dup pHash distance (default %(default)s)")
    parser.add_argument("--clip-model", default=ImageTextSettings.clip_model, help="open_clip model name or local-dir:PATH")
    parser.add_argument("--clip-pretrained", default=None, help="checkpoint file for --clip-model")
    parser.add_argument("--clip-keep-top-fraction", type=float, default=0.9)
    parser.add_argument("--clip-min-score", type=float, default=None)
    parser.add_argument("--metadata", default=ImageTextSettings.metadata_path, help="MetaCLIP metadata file")
    parser.add_argument("--metaclip-t", type=int, default=None, help="MetaCLIP t (default: scaled with corpus size)")
    parser.add_argument("--samples-per-shard", type=int, default=10_000)
    parser.add_argument("--max-shard-bytes", type=int, default=1 << 30)
    args, beam_argv = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    clip_filter = clip_score.ClipFilterConfig(min_score=args.clip_min_score) if args.clip_min_score is not None else \
        clip_score.ClipFilterConfig(keep_top_fraction=args.clip_keep_top_fraction)
    settings = ImageTextSettings(hamming_k=args.hamming_k, benchmark_k=args.hamming_k, clip_model=args.clip_model,
                                 clip_pretrained=args.clip_pretrained, clip_filter=clip_filter, metadata_path=args.metadata,
                                 metaclip_t=args.metaclip_t, samples_per_shard=args.samples_per_shard,
                                 max_shard_bytes=args.max_shard_bytes)
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(","))
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    partitions = [p for p in args.partitions.split(",") if p] or list_partitions(args.root)
    if not partitions:
        parser.error(f"no drops under {storage.join(args.root, 'landing', TRACK)}")
    ensure_defaults(args.root, settings, stages)
    for stage in STAGES:
        if stage not in stages:
            continue
        logging.info("stage %s over %d drop(s)", stage, len(partitions))
        if stage in ("samples", "phash", "quality", "clip", "balance", "recaption"):
            fn = {"samples": run_samples, "phash": run_phash, "quality": run_quality, "clip": run_clip, "balance": run_balance,
                  "recaption": run_recaption}[stage]
            result = fn(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)  # every drop in one Beam job
            logging.info("stage %s: %s", stage, json.dumps(dict(result.counters), sort_keys=True))
        elif stage == "fingerprints":
            run_fingerprints(args.root, settings, beam_argv, test_pipeline=test_pipeline)
        elif stage == "neardup":
            run_neardup(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
        elif stage == "metaclip_counts":
            run_metaclip_counts(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
        elif stage == "shards":
            index = run_shards(args.root, partitions, settings, argv=beam_argv, test_pipeline=test_pipeline)
            print(json.dumps({"url": index.url, "samples": index.num_samples, "shards": len(index.shards),
                              "bytes": index.total_bytes}, indent=2))


if __name__ == "__main__":
    run()
