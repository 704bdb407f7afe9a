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
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from apache_beam.ml.inference.base import RunInference

from curation import clip_score, generation, image_dedup, imaging, ingest, metaclip, neardup, phash, shards, storage, text_quality
from curation import recaption as recaption_ops
from pipelines.generation import EngineSpec, GenerationModelHandler, resolve_spec
from curation.records import content_id, sha256_hex
from pipelines.common import (
    WriteManifest,
    content_version,
    extend_schema,
    format_exception,
    landing_drops,
    manifest_url,
    quarantine_schema,
    quarantine_url,
    quarantined,
    read_schema,
    run_pipeline,
    split_dofn,
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
    neardup_engine: str = "auto"  # auto | inmemory | beam
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

    def __init__(self, root: str, partition: str, settings: ImageTextSettings) -> None:
        self.root, self.partition, self.settings = root, partition, settings
        self.ok = Metrics.counter(TRACK, "samples_ok")
        self.bad = Metrics.counter(TRACK, "samples_quarantined")

    def process(self, ref: dict):
        rec = dict(ref, partition=self.partition, id=None, sha256=None, n_bytes=None, format=None, width=None, height=None)
        if ref.get("reason"):
            self.bad.inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "samples", ref["reason"], ref.get("error")))
            return
        try:
            data = ingest.load_bytes(ref, self.settings.fetch_limits)
        except ingest.FetchError as e:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "samples", e.reason, str(e)))
            return
        except (FileNotFoundError, OSError) as e:
            self.bad.inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "samples", "unreadable", format_exception(e)))
            return
        digest = sha256_hex(data)
        if ref["uri"].startswith(("http://", "https://")):
            # Fetched bytes are kept once, content-addressed, so later stages never fetch again.
            blob = storage.join(self.root, "cache", "blobs", digest[:2], digest)
            if not storage.exists(blob):
                storage.write_bytes(blob, data)
            rec.update(uri=blob, byte_offset=-1, byte_size=-1)
        info = imaging.inspect_image(data, self.settings.image_limits)
        rec.update(id=content_id(data, drop_relative_key(ref["source_key"], landing_url(self.root, self.partition), self.partition)),
                   sha256=digest, n_bytes=len(data),
                   format=info.format, width=info.oriented_width, height=info.oriented_height)
        if not info.ok:
            self.bad.inc()
            Metrics.counter(TRACK, f"drop_{info.reason}").inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "samples", info.reason, info.error))
            return
        self.ok.inc()
        yield rec


class IngestDrop(beam.PTransform):
    """All references of one drop -> valid sample records (main) and quarantine rows."""

    def __init__(self, root: str, partition: str, settings: ImageTextSettings) -> None:
        super().__init__()
        self.root, self.partition, self.settings = root, partition, settings

    def expand(self, pbegin):
        sources = ingest.discover(landing_url(self.root, self.partition))
        refs = (
            pbegin
            | "Sources" >> beam.Create(sources)
            | "References" >> beam.FlatMapTuple(ingest.iter_source)
            | "Spread" >> beam.Reshuffle()
        )
        return split_dofn(refs, "Inspect", InspectSample(self.root, self.partition, self.settings))


# ----------------------------------------------------------------------------------------------
# phash


class PHashBatch(beam.DoFn):
    """Decode (JPEG draft mode) and hash a batch; undecodable images go to quarantine."""

    def __init__(self, settings: ImageTextSettings) -> None:
        self.settings = settings
        self.hashed = Metrics.counter(TRACK, "phash_ok")
        self.failed = Metrics.counter(TRACK, "phash_decode_error")

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
                self.failed.inc()
                yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "phash", *errors[i]))
            else:
                self.hashed.inc()
                yield dict(rec, phash=int(hashes[i]))


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


def exact_dedup(key_and_group) -> Iterable[dict]:
    """One sha256 group -> the representative (main) and the others (tagged 'exact')."""
    _, group = key_and_group
    for rec in image_dedup.decide_exact(list(group)):
        if rec["_decision"] == "keep":
            yield {k: v for k, v in rec.items() if k != "_decision"}
        else:
            yield beam.pvalue.TaggedOutput("exact", rec)


def _band_key_records(rec: dict, plan: neardup.SearchPlan, query_prefix: str | None) -> Iterable[tuple]:
    query = None if query_prefix is None else rec["id"].startswith(query_prefix)
    homes, probes = neardup.item_band_keys(int(rec["phash"]), plan, query=query)
    slim = (rec["id"], int(rec["phash"]))
    for key in homes:
        yield key, ("home",) + slim
    for key in probes:
        yield key, ("probe",) + slim


def _verify_band_group(key_and_items, plan: neardup.SearchPlan, k: int, query_prefix: str | None) -> Iterable[tuple[str, str, int]]:
    """Verified pairs (id_a < id_b, hamming) among the items sharing one band key."""
    key, items = key_and_items
    homes = [(i, h) for role, i, h in items if role == "home"]
    probes = [(i, h) for role, i, h in items if role == "probe"]
    home_query = None if query_prefix is None else np.array([i.startswith(query_prefix) for i, _ in homes], dtype=bool)
    pairs = neardup.verify_group(
        key, [i for i, _ in homes], np.array([h for _, h in homes], dtype=np.uint64),
        [i for i, _ in probes], np.array([h for _, h in probes], dtype=np.uint64), plan, k, home_query=home_query)
    for a, b, d in pairs:
        yield (a, b, int(d))


class NearDupPairs(beam.PTransform):
    """Near-dup edges within k between the given hashed records (and benchmark rows marked _bench).

    engine 'beam': band keys -> GroupByKey -> popcount verification in each group (scales out);
    engine 'inmemory': one worker runs the vectorised banded search over all hashes (fast up to
    ~10^8 hashes, 8 bytes each). Both return exactly the same edges.
    """

    def __init__(self, k: int, n_estimate: int, engine: str = "auto", query_prefix: str | None = None) -> None:
        super().__init__()
        self.k, self.query_prefix = k, query_prefix
        self.engine = ("inmemory" if n_estimate <= 50_000_000 else "beam") if engine == "auto" else engine
        # In Beam every probe key is a shuffled element: weight probes heavily so the plan uses
        # fewer, larger groups (~27 keys per item at k=10 instead of ~236 for the in-memory plan).
        self.plan = neardup.plan_search(max(n_estimate, 1), k, probe_weight=100 if self.engine == "beam" else 1.0)

    def expand(self, records):
        k, qp = self.k, self.query_prefix
        if self.engine == "inmemory":
            def search(rows: list[dict]) -> list[tuple[str, str, int]]:
                rows = sorted(rows, key=lambda r: r["id"])
                hashes = np.array([int(r["phash"]) for r in rows], dtype=np.uint64)
                mask = None if qp is None else np.array([r["id"].startswith(qp) for r in rows], dtype=bool)
                pairs, dists = neardup.find_pairs(hashes, k, query_mask=mask, return_distances=True)
                return [(rows[a]["id"], rows[b]["id"], int(d)) for (a, b), d in zip(pairs.tolist(), dists.tolist())]

            return (
                records
                | "Slim" >> beam.Map(lambda r: {"id": r["id"], "phash": r["phash"]})
                | "All" >> beam.combiners.ToList()
                | "Search" >> beam.FlatMap(search)
            )
        plan = self.plan
        return (
            records
            | "BandKeys" >> beam.FlatMap(_band_key_records, plan, qp)
            | "GroupBands" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(_verify_band_group, plan, k, qp)
        )


# ----------------------------------------------------------------------------------------------
# caption quality


class CaptionQuality(beam.DoFn):
    def __init__(self, config: text_quality.CaptionQualityConfig) -> None:
        self.config = config

    def process(self, rec: dict):
        keep, reason = text_quality.check_caption(rec.get("caption") or "", self.config)
        stats = text_quality.caption_stats(rec.get("caption") or "")
        out = dict(rec, caption_stats=json.dumps(stats, sort_keys=True, default=float), caption_lang=stats.get("lang"))
        Metrics.counter(TRACK, "quality_kept" if keep else f"quality_drop_{reason}").inc()
        if keep:
            yield out
        else:
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(out, "quality", reason))


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
                yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "clip", reason or "decode_error",
                                                                          info.error if info is not None else err))
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


def _apply_clip_threshold(rec: dict, threshold: float | None):
    keep, reason = clip_score.clip_verdict(rec["clip_score"], threshold)
    Metrics.counter(TRACK, "clip_kept" if keep else f"clip_drop_{reason}").inc()
    if keep:
        yield rec
    else:
        yield beam.pvalue.TaggedOutput("quarantine", quarantined(rec, "clip", reason, f"score {rec['clip_score']:.4f} < {threshold:.4f}"))


class ClipScoreFilter(beam.PTransform):
    def __init__(self, settings: ImageTextSettings, model: str, pretrained: str | None) -> None:
        super().__init__()
        self.settings, self.model, self.pretrained = settings, model, pretrained

    def expand(self, records):
        s = self.settings
        batches = records | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=s.clip_batch_size)
        scored, failed = split_dofn(
            batches, "Score", ClipScoreBatch(self.model, self.pretrained, s.clip_batch_size, s.image_limits, s.fetch_limits))
        cfg = s.clip_filter
        threshold = (
            scored
            | "Scores" >> beam.Map(lambda r: r["clip_score"])
            | "AllScores" >> beam.combiners.ToList()
            | "Threshold" >> beam.Map(lambda xs: clip_score.threshold_for(np.array(xs), cfg))
        )
        filtered = scored | "Filter" >> beam.FlatMap(_apply_clip_threshold, beam.pvalue.AsSingleton(threshold)).with_outputs(
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
    Metrics.counter(TRACK, "balance_kept" if keep else f"balance_drop_{reason}").inc()
    if keep:
        yield out
    else:
        yield beam.pvalue.TaggedOutput("quarantine", quarantined(out, "balance", reason))


BALANCE_FIELDS = [("metaclip_entries", pa.list_(pa.string()))]


# ----------------------------------------------------------------------------------------------
# Stage runners: each builds and runs one Beam pipeline.


def _read(p, url: str, label: str):  # noqa: ANN001
    return p | label >> beam.io.ReadFromParquet(url)


def _write_split(ok, bad, root: str, asset: str, partition: str, schema: pa.Schema, label: str = "") -> None:  # noqa: ANN001
    ok | f"{label}WriteManifest" >> WriteManifest(manifest_url(root, asset, partition), schema)
    bad | f"{label}WriteQuarantine" >> WriteManifest(quarantine_url(root, asset, partition), quarantine_schema(schema))


def run_samples(root: str, partition: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    def build(p):  # noqa: ANN001
        ok, bad = p | "Ingest" >> IngestDrop(root, partition, settings)
        _write_split(ok, bad, root, ASSET["samples"], partition, SAMPLE_SCHEMA)

    return run_pipeline(argv, build, test_pipeline)


def _per_partition(stage: str, upstream: str, fields, transform_factory):  # noqa: ANN001
    """A per-drop stage: read the upstream manifest, apply a (ok, quarantine) transform, write both."""

    def run_stage(root: str, partition: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
        src = manifest_url(root, upstream, partition)
        if not storage.exists(src):
            raise FileNotFoundError(f"{stage}: upstream manifest missing: {src} (materialize {upstream} for {partition} first)")
        schema = extend_schema(read_schema(src), fields)

        def build(p):  # noqa: ANN001
            ok, bad = _read(p, src, "Read") | stage.capitalize() >> transform_factory(root, settings)
            _write_split(ok, bad, root, ASSET[stage], partition, schema)

        return run_pipeline(argv, build, test_pipeline)

    return run_stage


run_phash = _per_partition("phash", ASSET["samples"], PHASH_FIELDS, lambda root, s: ComputePHash(s))
run_quality = _per_partition("quality", ASSET["neardup"], QUALITY_FIELDS, lambda root, s: _Quality(s.caption))


class _Quality(beam.PTransform):
    def __init__(self, config: text_quality.CaptionQualityConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, records):
        return split_dofn(records, "Check", CaptionQuality(self.config))


def run_clip(root: str, partition: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    model = settings.resolve(root, settings.clip_model) if settings.clip_model.startswith("local-dir:") else settings.clip_model
    pretrained = settings.resolve(root, settings.clip_pretrained) if settings.clip_pretrained else None
    return _per_partition("clip", ASSET["quality"], CLIP_FIELDS, lambda r, s: ClipScoreFilter(s, model, pretrained))(
        root, partition, settings, argv, test_pipeline)


def run_fingerprints(root: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None,
                     folder: str | None = None):  # noqa: ANN001
    refs = benchmark_records(root, folder)

    def build(p):  # noqa: ANN001
        ok, bad = (p | "Benchmarks" >> beam.Create(refs)) | "Hash" >> ComputePHash(settings)
        _write_split(ok, bad, root, ASSET["fingerprints"], CORPUS, FINGERPRINT_SCHEMA)

    return run_pipeline(argv, build, test_pipeline)


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

    def build(p):  # noqa: ANN001
        reads = [_read(p, s, f"Read{i}") for i, s in enumerate(srcs)]
        records = reads | "Corpus" >> beam.Flatten()
        exact = (
            records
            | "BySha" >> beam.Map(lambda r: (r["sha256"], r))
            | "GroupSha" >> beam.GroupByKey()
            | "ExactDedup" >> beam.FlatMap(exact_dedup).with_outputs("exact", main="unique")
        )
        unique = exact.unique
        pairs = unique | "NearPairs" >> NearDupPairs(k, n_estimate, settings.neardup_engine)
        if storage.exists(bench_url):
            bench = _read(p, bench_url, "ReadBench") | "MarkBench" >> beam.Map(lambda r: dict(r, _bench=True))
            both = (unique, bench) | "WithBench" >> beam.Flatten()
            bench_pairs = (
                both
                | "BenchPairs" >> NearDupPairs(bk, n_estimate, settings.neardup_engine, query_prefix="bench:")
                | "OnlyBench" >> beam.Filter(lambda e: e[0].startswith("bench:") != e[1].startswith("bench:"))
            )
        else:
            bench_pairs = p | "NoBench" >> beam.Create([])

        def decide(nodes, edges, bedges):  # noqa: ANN001
            hits = image_dedup.benchmark_hits(bedges, lambda i: i.startswith("bench:"))
            nodes = sorted(nodes, key=lambda r: r["id"])
            return image_dedup.resolve_clusters(nodes, sorted(edges), hits)

        decided = (
            p
            | "One" >> beam.Create([None])
            | "Decide" >> beam.FlatMap(
                lambda _, nodes, edges, bedges: decide(nodes, edges, bedges),
                beam.pvalue.AsList(unique), beam.pvalue.AsList(pairs), beam.pvalue.AsList(bench_pairs))
        )
        allrecs = (decided, exact.exact) | "AllDecisions" >> beam.Flatten()
        for part in partitions:
            mine = allrecs | f"Of_{part}" >> beam.Filter(lambda r, part=part: r["partition"] == part)
            kept = mine | f"Kept_{part}" >> beam.Filter(lambda r: r["_decision"] == "keep")
            dropped = (
                mine
                | f"Dropped_{part}" >> beam.Filter(lambda r: r["_decision"] != "keep")
                | f"Q_{part}" >> beam.Map(lambda r: quarantined(r, "neardup", r["_decision"], f"duplicate of {r['dup_of']} (hamming {r['hamming']})"))
            )
            kept | f"WriteManifest_{part}" >> WriteManifest(manifest_url(root, ASSET["neardup"], part), schema)
            dropped | f"WriteQuarantine_{part}" >> WriteManifest(quarantine_url(root, ASSET["neardup"], part), quarantine_schema(qschema))
        pair_schema = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("hamming", pa.int32()), ("kind", pa.string())])
        tagged = (
            (pairs | "TagNear" >> beam.Map(lambda e: {"id_a": e[0], "id_b": e[1], "hamming": e[2], "kind": "near"}),
             bench_pairs | "TagBench" >> beam.Map(lambda e: {"id_a": e[0], "id_b": e[1], "hamming": e[2], "kind": "benchmark"}))
            | "AllPairs" >> beam.Flatten()
        )
        tagged | "WritePairs" >> WriteManifest(manifest_url(root, ASSET["neardup"], "_pairs"), pair_schema)

    return run_pipeline(argv, build, test_pipeline)


def run_metaclip_counts(root: str, partitions: Sequence[str], settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    srcs = [manifest_url(root, ASSET["clip"], p) for p in partitions]
    metadata_path = settings.resolve(root, settings.metadata_path)
    entries = metaclip.load_metadata(metadata_path)

    def build(p):  # noqa: ANN001
        reads = [_read(p, s, f"Read{i}") for i, s in enumerate(srcs)]
        counted = (
            reads
            | "Corpus" >> beam.Flatten()
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

    return run_pipeline(argv, build, test_pipeline)


def metaclip_threshold(root: str, settings: ImageTextSettings) -> tuple[int, int]:
    """(t, number of texts) used for balancing: the configured t or the auto-scaled one."""
    summary = storage.read_json(storage.join(root, "manifests", ASSET["metaclip_counts"], "summary.json"))
    n = int(summary["n_texts"])
    return (settings.metaclip_t if settings.metaclip_t is not None else metaclip.auto_threshold(n)), n


def run_balance(root: str, partition: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    src = manifest_url(root, ASSET["clip"], partition)
    counts_url = manifest_url(root, ASSET["metaclip_counts"], CORPUS)
    if not storage.exists(counts_url):
        raise FileNotFoundError(f"balance: entry counts missing: {counts_url} (materialize metaclip_entry_counts first)")
    metadata_path = settings.resolve(root, settings.metadata_path)
    entries = metaclip.load_metadata(metadata_path)
    counts = np.zeros(len(entries), dtype=np.int64)
    for row in storage.read_records(counts_url):
        counts[row["entry_index"]] = row["count"]
    t, _ = metaclip_threshold(root, settings)
    probs = metaclip.entry_probabilities(counts, t)
    schema = extend_schema(read_schema(src), BALANCE_FIELDS)

    def build(p):  # noqa: ANN001
        r = (
            _read(p, src, "Read")
            | "Match" >> beam.ParDo(MatchEntries(metadata_path))
            | "Balance" >> beam.FlatMap(balance_record, probs, entries, settings.metaclip_version).with_outputs("quarantine", main="ok")
        )
        _write_split(r.ok, r.quarantine, root, ASSET["balance"], partition, schema)

    return run_pipeline(argv, build, test_pipeline)


RECAPTION_FIELDS = [("recaption", pa.string()), ("recaption_status", pa.string()), ("recaption_model", pa.string()),
                    ("recaption_consistency", pa.float32())]


def recaption_request(rec: dict, fetch_limits: ingest.FetchLimits) -> generation.GenerationRequest:
    """The VLM request for one record: its image and its original caption as the prior."""
    image = ingest.load_bytes(rec, fetch_limits)
    return generation.GenerationRequest(messages=recaption_ops.messages_for(rec["caption"] or "", image), request_id=rec["id"])


def attach_recaption(pr, records: dict, config: recaption_ops.RecaptionConfig) -> dict:  # noqa: ANN001
    """Record + re-caption columns: the new caption when it passes the checks, else its reason."""
    result: generation.GenerationResult = pr.inference
    rec = records[result.request_id]
    comp = result.completions[0] if result.completions else None
    text = recaption_ops.clean(comp.text) if comp else ""
    verdict = recaption_ops.check_recaption(rec["caption"] or "", text, comp.finish_reason if comp else None, config,
                                            error=result.error or (None if comp else "no completion"))
    Metrics.counter(TRACK, "recaption_kept" if verdict.keep else f"recaption_rejected_{verdict.reason}").inc()
    cons = recaption_ops.consistency(rec["caption"] or "", text) if text else None
    return dict(rec, recaption=text if verdict.keep else None, recaption_status="ok" if verdict.keep else verdict.reason,
                recaption_model=result.model, recaption_consistency=cons)


def run_recaption(root: str, partition: str, settings: ImageTextSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    """Altogether-style re-captioning of every balanced record (nothing is dropped here)."""
    src = manifest_url(root, ASSET["balance"], partition)
    if not storage.exists(src):
        raise FileNotFoundError(f"recaption: {src} missing (materialize metaclip_balanced for {partition} first)")
    spec = resolve_spec(root, settings.recaption_engine)
    schema = extend_schema(read_schema(src), RECAPTION_FIELDS)
    handler = GenerationModelHandler(spec, settings.recaption_sampling, max_batch_size=32)

    def build(p):  # noqa: ANN001
        records = p | "Read" >> beam.io.ReadFromParquet(src)
        by_id = records | "ById" >> beam.Map(lambda r: (r["id"], r))
        results = (records | "Requests" >> beam.Map(recaption_request, settings.fetch_limits)
                   | "Generate" >> RunInference(handler))
        out = results | "Attach" >> beam.Map(attach_recaption, beam.pvalue.AsDict(by_id), settings.recaption)
        out | "WriteManifest" >> WriteManifest(manifest_url(root, ASSET["recaption"], partition), schema)

    return run_pipeline(argv, build, test_pipeline)


def _sample_for_shard(rec: dict, fetch_limits: ingest.FetchLimits) -> shards.Sample:
    data = ingest.load_bytes(rec, fetch_limits)
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
    lineage = {"inputs": [{"manifest": s, "sha256": hashlib.sha256(storage.read_bytes(s)).hexdigest()} for s in srcs],
               "upstream_asset": upstream}
    records = sorted((r for s in srcs for r in storage.read_records(s)), key=lambda r: r["id"])
    index = shards.write_shards(
        (_sample_for_shard(r, settings.fetch_limits) for r in records),
        out_url,
        samples_per_shard=settings.samples_per_shard,
        max_shard_bytes=settings.max_shard_bytes,
        dataset_name=settings.dataset,
        lineage=lineage,
        metadata_schema=SHARD_METADATA_SCHEMA,
    )
    shards.publish_latest(root, settings.dataset, version, out_url)
    return index


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
            for part in partitions:
                fn(args.root, part, settings, beam_argv)
        elif stage == "fingerprints":
            run_fingerprints(args.root, settings, beam_argv)
        elif stage == "neardup":
            run_neardup(args.root, partitions, settings, beam_argv)
        elif stage == "metaclip_counts":
            run_metaclip_counts(args.root, partitions, settings, beam_argv)
        elif stage == "shards":
            index = run_shards(args.root, partitions, settings, argv=beam_argv)
            print(json.dumps({"url": index.url, "samples": index.num_samples, "shards": len(index.shards),
                              "bytes": index.total_bytes}, indent=2))


if __name__ == "__main__":
    run()
