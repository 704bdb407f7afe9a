"""Video curation as Beam pipelines, runnable without Dagster: probe, same-footage dedup, scene clips,
timestamped VLM captions, temporal-grounding samples and chat-format shards.

    python -m pipelines.video --root ./data --stages all
    python -m pipelines.video --root ./data --stages probe,neardup,clips --partitions drop-0001
    python -m pipelines.video --root ./data --engine openai --base-url http://127.0.0.1:8000 --model MiMo-VL-7B-RL

| stage | scope | reads | writes |
|---|---|---|---|
| probe | per drop | landing/video/<drop>/* | manifests/video_probe/<drop>.parquet |
| neardup | corpus | video_probe (all drops) | manifests/video_neardup_clusters/all.parquet |
| clips | per drop | video_probe, video_neardup_clusters (representatives) | manifests/video_clips/<drop>.parquet (frames as JPEG bytes) |
| captions | per drop | video_clips | manifests/video_captions/<drop>.parquet |
| temporal_grounding | per drop | video_captions | manifests/temporal_grounding_samples/<drop>.parquet |
| shards | corpus | video_clips, video_captions, temporal_grounding_samples | shards/video/<version>/, shards/temporal_grounding/<version>/ |

Every rejected file, video, clip or event goes to quarantine/<asset>/<drop or all>.parquet with its stage
and reason (the probe reasons of ``curation.video``, ``exact_duplicate``, ``near_duplicate``, ``timeout``,
``frame_sampling_failed``, ``over_clip_cap``, the caption reasons of ``curation.video_captions``,
``ambiguous_query``; an exception is a dead letter ``exception_<Type>``). Ids come from content: a video
is the sha256 of its bytes, a clip is ``<video id[:16]>_<start ms>_<end ms>``, so re-runs give the same rows.

Files in a drop: every file is probed except sidecars (README/LICENSE, .txt, .md, .json, .jsonl,
.srt, .vtt and hidden files), so an audio file or junk named .mp4 is quarantined with a reason rather
than skipped. ffmpeg needs a local file: other fsspec URLs are copied to a temporary file first.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RunInference

from curation import generation, shards, storage, video, video_captions
from pipelines.common import (
    KeepIds,
    Split,
    Stage,
    StageResult,
    WriteManifest,
    accept,
    cli_plan,
    content_version,
    format_exception,
    landing_drops,
    manifest_url,
    quarantine_schema,
    quarantine_url,
    quarantined,
    read_manifests,
    reject,
    run_pipeline,
    split_dofn,
    track_cli,
)
from pipelines import dedup
from pipelines.generation import EngineSpec, GenerationModelHandler, resolve_spec

TRACK = "video"
STAGES = ("probe", "neardup", "clips", "captions", "temporal_grounding", "shards")
CORPUS = "all"
ASSET = {"probe": "video_probe", "neardup": "video_neardup_clusters", "clips": "video_clips",
         "captions": "video_captions", "temporal_grounding": "temporal_grounding_samples"}
DATASETS = ("video", "temporal_grounding")
SIDECAR_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".srt", ".vtt", ".csv")
SIDECAR_PREFIXES = ("readme", "license", ".")
GROUNDING_TEMPLATE = ("The images above are {n} frames of one video clip, in order; the text before each frame is "
                      "its time from the start of the clip. The clip lasts {duration}.\n"
                      "When does the following happen: \"{query}\"? Answer with the interval as [mm:ss, mm:ss].")

PROBE_SCHEMA = pa.schema([
    ("id", pa.string()), ("partition", pa.string()), ("source", pa.string()), ("name", pa.string()),
    ("video_ok", pa.bool_()), ("video_reason", pa.string()), ("video_error", pa.string()), ("container", pa.string()),
    ("duration_s", pa.float64()), ("codec", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("rotation", pa.int32()), ("fps", pa.float64()), ("n_frames", pa.int64()), ("has_audio", pa.bool_()),
    ("bit_rate", pa.int64()), ("size_bytes", pa.int64()), ("keyframes", pa.list_(pa.float64())),
    ("keyframe_interval_s", pa.float64()), ("dup_of", pa.string()),
])
CLUSTER_SCHEMA = pa.schema([
    ("id", pa.string()), ("partition", pa.string()), ("source", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("duration_s", pa.float64()), ("bit_rate", pa.int64()), ("hashes", pa.list_(pa.uint64())),
    ("cluster", pa.string()), ("cluster_size", pa.int32()), ("representative", pa.bool_()), ("dup_of", pa.string()),
    ("matches", pa.int32()),
])
CLIP_SCHEMA = pa.schema([
    ("id", pa.string()), ("video_id", pa.string()), ("partition", pa.string()), ("source", pa.string()),
    ("clip_index", pa.int32()), ("n_clips", pa.int32()), ("start", pa.float64()), ("end", pa.float64()),
    ("duration", pa.float64()), ("video_duration", pa.float64()), ("cuts", pa.list_(pa.float64())),
    ("frame_times", pa.list_(pa.float64())), ("frames", pa.list_(pa.binary())), ("frame_width", pa.int32()),
    ("frame_height", pa.int32()),
])
CAPTION_SCHEMA = pa.schema([
    ("id", pa.string()), ("video_id", pa.string()), ("partition", pa.string()), ("source", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("duration", pa.float64()), ("caption", pa.string()),
    ("events", pa.string()), ("n_events", pa.int32()), ("response", pa.string()), ("attempts", pa.int32()),
    ("attempt_reasons", pa.list_(pa.string())), ("model", pa.string()), ("cached", pa.bool_()),
])
GROUNDING_SCHEMA = pa.schema([
    ("id", pa.string()), ("clip_id", pa.string()), ("video_id", pa.string()), ("partition", pa.string()),
    ("source", pa.string()), ("event_index", pa.int32()), ("query", pa.string()), ("answer", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("clip_start", pa.float64()), ("clip_end", pa.float64()),
])


@dataclass(frozen=True)
class VideoSettings:
    """Knobs of the track; Dagster config and CLI flags map onto it.

    Defaults suit a real VLM (8 frames of 448 px per clip). The demo and the tests with the tiny
    random model use fewer, smaller frames and a clip cap.
    """

    limits: video.VideoLimits = field(default_factory=video.VideoLimits)
    hash_positions: int = video.DEFAULT_POSITIONS  # aligned frames per video for same-footage hashing
    hash_frame_size: int = 160  # pHash reduces to 32x32: small frames hash the same, decode cheaper
    phash_k: int = 10
    min_matches: int | None = None  # None: a strict majority of the positions
    scene_threshold: float = video.DEFAULT_SCENE_THRESHOLD
    min_clip_s: float = 2.0
    max_clip_s: float = 30.0
    max_clips_per_video: int | None = None  # extra clips go to quarantine as over_clip_cap
    frames_per_clip: int = 8
    frame_size: int = video.DEFAULT_FRAME_SIZE
    sample_workers: int = 2
    engine: EngineSpec = field(default_factory=lambda: EngineSpec(
        "vllm", "models/tiny-qwen2_5_vl", options={"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}))
    sampling: generation.SamplingParams = field(default_factory=lambda: generation.SamplingParams(
        n=1, temperature=0.7, max_tokens=384, seed=0))
    retries: int = 2  # a rejected answer is asked again (seed + attempt) at most this many times
    event_format: video_captions.EventFormat = field(default_factory=video_captions.EventFormat)
    inference_batch_size: int = 16
    samples_per_shard: int = 1000
    max_shard_bytes: int = shards.DEFAULT_MAX_SHARD_BYTES


def list_partitions(root: str) -> list[str]:
    """Drop folders under landing/video/ (sorted)."""
    return landing_drops(root, TRACK)


def is_sidecar(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.startswith(SIDECAR_PREFIXES) or base.endswith(SIDECAR_SUFFIXES)


def drop_inputs(root: str, partition: str) -> list[dict]:
    """{source, name, partition} for every file of a drop but its sidecars, sorted by name."""
    drop = storage.join(root, "landing", TRACK, partition)
    fs, path = storage.filesystem(drop)
    if not fs.exists(path):
        raise FileNotFoundError(f"drop not found: {drop}")
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    out = []
    for p in sorted(fs.find(path)):
        name = p[len(path.rstrip("/")) + 1:]
        if is_sidecar(name) or any(part.startswith(".") for part in name.split("/")):
            continue
        out.append({"source": protocol + p if protocol and not p.startswith(protocol) else p, "name": name,
                    "partition": partition})
    return out


@contextlib.contextmanager
def local_file(url: str) -> Iterator[str]:
    """A local path for ``url``: the file itself, or a temporary copy of a remote object."""
    path = storage.local_path(url)
    if path is not None:
        yield path
        return
    suffix = os.path.splitext(url)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="video_") as tmp:
        fs, rpath = storage.filesystem(url)
        with fs.open(rpath, "rb") as f:
            while chunk := f.read(1 << 20):
                tmp.write(chunk)
        tmp.flush()
        yield tmp.name


# ----------------------------------------------------------------------------------------------
# probe


class ProbeVideo(beam.DoFn):
    """Hash, probe and (when it passes) list the keyframes of one file; rejections carry the reason."""

    def __init__(self, settings: VideoSettings) -> None:
        self.settings = settings

    def process(self, item: dict):
        s = self.settings
        with local_file(item["source"]) as path:
            rec = dict(item, id=shards.file_sha256(path), keyframes=[], keyframe_interval_s=None, dup_of=None)
            try:
                info = video.probe(path, s.limits)
                rec.update(info.as_record())
                if info.ok:
                    kfs = video.keyframe_times(path, timeout=s.limits.timeout_s)
                    rec.update(keyframes=kfs, keyframe_interval_s=(info.duration or 0.0) / max(1, len(kfs)))
            except video.VideoError as e:
                yield reject(rec, TRACK, "probe", e.reason, str(e))
                return
        if not info.ok:
            yield reject(rec, TRACK, "probe", info.reason or "unreadable_video", info.error)
            return
        yield accept(rec, TRACK, "probe")


class FirstCopy(beam.DoFn):
    """Files with the same bytes in one drop: the first by name stays, the others are exact duplicates."""

    def process(self, kv: tuple[str, Iterable[dict]]):
        _, recs = kv
        first, *rest = sorted(recs, key=lambda r: r["name"])
        yield first
        for r in rest:
            yield reject(dict(r, dup_of=first["id"]), TRACK, "probe", "exact_duplicate", f"same bytes as {first['name']}")


def video_files(p, root: str, partitions: Sequence[str], settings: VideoSettings):  # noqa: ANN001
    """The files of every given drop (sidecars left out), spread over workers."""
    items = [f for part in partitions for f in drop_inputs(root, part)]
    return p | "Files" >> beam.Create(items) | "Spread" >> beam.Reshuffle()


class Probe(beam.PTransform):
    """Probe each file; the same bytes twice in one drop keep the first copy by name."""

    def __init__(self, settings: VideoSettings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, files):
        ok, bad = split_dofn(files, "Probe", ProbeVideo(self.settings))
        dedup = (ok | "ByDropAndId" >> beam.Map(lambda r: ((r["partition"], r["id"]), r)) | "GroupById" >> beam.GroupByKey()
                 | "FirstCopy" >> beam.ParDo(FirstCopy()).with_outputs("quarantine", main="ok"))
        return dedup.ok, (bad, dedup.quarantine) | "AllDrops" >> beam.Flatten()


PROBE = Stage(TRACK, "probe", ASSET["probe"], None, (), lambda root, s: Probe(s), source=video_files,
              schema=lambda root, parts: PROBE_SCHEMA)


run_probe = PROBE.runner("Hash, probe and list keyframes of every file of the given drops.")


# ----------------------------------------------------------------------------------------------
# neardup (corpus)


class HashVideo(beam.DoFn):
    """pHash of frames at the same relative positions of every video (``video.sample_times``)."""

    def __init__(self, settings: VideoSettings) -> None:
        self.settings = settings

    def process(self, rec: dict):
        s = self.settings
        times = video.sample_times(0.0, rec["duration_s"], s.hash_positions)
        with local_file(rec["source"]) as path:
            try:
                frames = video.sample_frames(path, times, size=s.hash_frame_size, keyframes=rec.get("keyframes") or None,
                                             workers=s.sample_workers)
                hashes = video.video_phash(frames)
            except video.VideoError as e:
                Metrics.counter(TRACK, f"neardup_drop_{e.reason}").inc()
                yield beam.pvalue.TaggedOutput("quarantine", quarantined(_cluster_row(rec), "neardup", e.reason, str(e)))
                return
        yield dict(_cluster_row(rec), hashes=[int(h) for h in hashes])


def _cluster_row(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("id", "partition", "source", "width", "height", "duration_s", "bit_rate")}


def _footage_decisions(kv: tuple, k: int) -> Iterator:
    """One same-footage component -> its rows: the representative (``curation.video``'s rule) kept,
    every other member tagged for quarantine as ``near_duplicate``."""
    _, members = kv
    for r in video.footage_cluster([m.attrs for m in members], k):
        if r["representative"]:
            yield r
        else:
            Metrics.counter(TRACK, "neardup_drop_near_duplicate").inc()
            yield beam.pvalue.TaggedOutput("quarantine", quarantined(
                r, "neardup", "near_duplicate", f"same footage as {r['dup_of']} ({r['matches']}/{len(r['hashes'])} frames)"))


def run_neardup(root: str, partitions: Sequence[str], settings: VideoSettings, argv: Sequence[str] = (), test_pipeline=None):  # noqa: ANN001
    """Same-footage clusters over every drop: hashing fans out per video; edges, components and one
    representative per component come from the distributed dedup (``pipelines.dedup``), with the
    rule of ``curation.video.video_near_duplicates`` (whose in-memory ``cluster_videos`` is the oracle)."""
    srcs = [manifest_url(root, ASSET["probe"], p) for p in partitions]
    for src in srcs:
        if not storage.exists(src):
            raise FileNotFoundError(f"neardup: {src} missing (materialize video_probe first)")
    n_pos, k = settings.hash_positions, settings.phash_k
    need = n_pos // 2 + 1 if settings.min_matches is None else int(settings.min_matches)
    if not 1 <= need <= max(1, n_pos):
        raise ValueError(f"min_matches must be in 1..{n_pos}")
    plan = dedup.search_plan(dedup.manifest_rows(srcs), k)

    def build(p):  # noqa: ANN001
        probed = read_manifests(p, srcs, "Read") | "Spread" >> beam.Reshuffle()
        hashed, bad = split_dofn(probed, "Hash", HashVideo(settings))
        # a row is a node keyed by (id, partition, source): one file may sit in several drops
        nodes = hashed | "Nodes" >> beam.Map(lambda r: ((r["id"], r["partition"], r["source"]), r))
        edges = (nodes | "NodeHashes" >> beam.MapTuple(lambda node, r: (node, r["hashes"]))
                 | "SameFootage" >> dedup.AlignedHammingEdges(k, plan, need))
        clustered = ({"nodes": nodes, "edges": edges} | "Components" >> dedup.GroupComponents()
                     | "Cluster" >> beam.FlatMap(_footage_decisions, k).with_outputs("quarantine", main="ok"))
        # every hashed video is a row of the cluster table (representatives and duplicates alike)
        rows = (clustered.ok, clustered.quarantine) | "Rows" >> beam.Flatten()
        rows | "WriteManifest" >> WriteManifest(manifest_url(root, ASSET["neardup"], CORPUS), CLUSTER_SCHEMA)
        ((clustered.quarantine, bad) | "Drops" >> beam.Flatten()
         | "WriteQuarantine" >> WriteManifest(quarantine_url(root, ASSET["neardup"], CORPUS), quarantine_schema(CLUSTER_SCHEMA)))

    result = run_pipeline(argv, build, test_pipeline)
    return StageResult.corpus(TRACK, "neardup", ASSET["neardup"], root, partitions, result,
                              {"hash_positions": n_pos, "phash_k": k, "min_matches": need, "search_plan": plan.describe()})


# ----------------------------------------------------------------------------------------------
# clips


def clip_id(video_id: str, start: float, end: float) -> str:
    return f"{video_id[:16]}_{round(start * 1000):07d}_{round(end * 1000):07d}"


def _jpeg_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def _video_row(rec: dict) -> dict:
    """A clips-quarantine row for a whole video (keyed by the video id)."""
    return {"id": rec["id"], "video_id": rec["id"], "partition": rec["partition"], "source": rec["source"],
            "video_duration": rec["duration_s"]}


class MakeClips(beam.DoFn):
    """Scene cuts -> clip plan -> frames per clip (one keyframe-aware sampling call per video)."""

    def __init__(self, settings: VideoSettings) -> None:
        self.settings = settings

    def process(self, rec: dict):
        s = self.settings
        with local_file(rec["source"]) as path:
            try:
                cuts = video.detect_scenes(path, s.scene_threshold)
                spans = video.plan_clips(rec["duration_s"], cuts, s.min_clip_s, s.max_clip_s)
                kept = spans if s.max_clips_per_video is None else spans[: s.max_clips_per_video]
                per_clip = [video.sample_times(a, b, s.frames_per_clip) for a, b in kept]
                flat = sorted({t for ts in per_clip for t in ts})
                frames = dict(zip(flat, video.sample_frames(path, flat, size=s.frame_size,
                                                            keyframes=rec.get("keyframes") or None, workers=s.sample_workers)))
            except video.VideoError as e:
                yield reject(_video_row(rec), TRACK, "clips", e.reason, str(e))
                return
        if not spans:  # plan_clips gives no clip only for a non-positive duration, which probe rejects
            yield reject(_video_row(rec), TRACK, "clips", "zero_length", f"no clip in {rec['duration_s']} s")
            return
        base = {"video_id": rec["id"], "partition": rec["partition"], "source": rec["source"], "n_clips": len(spans),
                "video_duration": rec["duration_s"], "cuts": cuts}
        for i, (a, b) in enumerate(spans):
            row = dict(base, id=clip_id(rec["id"], a, b), clip_index=i, start=a, end=b, duration=round(b - a, 3))
            if i >= len(kept):
                yield reject(row, TRACK, "clips", "over_clip_cap",
                             f"clip {i + 1} of {len(spans)} > max_clips_per_video={s.max_clips_per_video}")
                continue
            imgs = [frames[t] for t in per_clip[i]]
            w, h = _jpeg_size(imgs[0]) if imgs else (None, None)
            Metrics.counter(TRACK, "clips_kept").inc()
            yield dict(row, frame_times=[round(t - a, 3) for t in per_clip[i]], frames=imgs, frame_width=w, frame_height=h)


def representative_videos(p, root: str, partitions: Sequence[str], settings: VideoSettings):  # noqa: ANN001
    """Probed videos of the given drops that represent their same-footage cluster (a join by id)."""
    srcs = [manifest_url(root, ASSET["probe"], part) for part in partitions]
    csrc = manifest_url(root, ASSET["neardup"], CORPUS)
    for url in (*srcs, csrc):
        if not storage.exists(url):
            raise FileNotFoundError(f"clips: {url} missing (materialize video_probe and video_neardup_clusters first)")
    wanted = frozenset(partitions)
    reps = (read_manifests(p, [csrc], "ReadClusters", columns=["id", "partition", "representative"])
            | "Representatives" >> beam.FlatMap(lambda r: [r["id"]] if r["representative"] and r["partition"] in wanted else []))
    return {"records": read_manifests(p, srcs, "Read"), "keep": reps} | "RepresentativesOnly" >> KeepIds()


CLIPS = Stage(TRACK, "clips", ASSET["clips"], None, (), lambda root, s: Split("Clips", MakeClips(s)), source=representative_videos,
              schema=lambda root, parts: CLIP_SCHEMA)


run_clips = CLIPS.runner("Scene-aware clips with sampled frames of the representative videos of the given drops.")


# ----------------------------------------------------------------------------------------------
# captions


def caption_request(clip: dict) -> generation.GenerationRequest:
    """The VLM request of one clip (frames with their timestamps, then the instruction)."""
    msgs = video_captions.caption_messages(list(clip["frames"]), list(clip["frame_times"]), clip["duration"])
    return generation.GenerationRequest(messages=msgs, request_id=clip["id"])


class CaptionModelHandler(GenerationModelHandler):
    """RunInference handler over clips: generate, check, and ask again the clips whose answer failed
    (seed + attempt, so a retry is a new sample and a new cache key), up to ``retries`` times.

    Retrying inside the handler keeps one engine (one vLLM instance) for all attempts and batches the
    retries of a batch together. Each inference is a dict: ok, caption, events, reason, attempts...
    """

    def __init__(self, spec: EngineSpec, params: generation.SamplingParams, retries: int,
                 fmt: video_captions.EventFormat, max_batch_size: int = 16) -> None:
        super().__init__(spec, replace(params, n=1), max_batch_size=max_batch_size)
        self.retries, self.fmt = retries, fmt

    def run_inference(self, batch: Sequence[dict], model: generation.Engine,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        requests = [caption_request(c) for c in batch]
        out: list[dict] = [{"attempts": 0, "attempt_reasons": [], "ok": False} for _ in batch]
        pending = list(range(len(batch)))
        for attempt in range(self.retries + 1):
            if not pending:
                break
            if attempt:
                Metrics.counter(TRACK, "caption_retries").inc(len(pending))
            try:
                results = model.generate([requests[i] for i in pending], replace(self.params, seed=self.params.seed + attempt))
            except Exception as e:  # noqa: BLE001 - an engine that raises must not sink the batch: a value per clip
                err = format_exception(e)
                results = [generation.GenerationResult(requests[i].request_id, [], model.model_id, error=err) for i in pending]
            failed = []
            for i, res in zip(pending, results):
                c = res.completions[0] if res.completions else None
                check = video_captions.check_response(
                    c.text if c else None, batch[i]["duration"], c.finish_reason if c else None,
                    res.error or (None if c else "no completions"), self.fmt)
                o = out[i]
                o.update(attempts=attempt + 1, response=c.text if c else None, model=res.model, cached=res.cached,
                         error=res.error, reason=check.reason)
                o["attempt_reasons"].append(check.reason or "ok")
                if check.ok:
                    o.update(ok=True, caption=check.caption, events=[e.as_dict() for e in check.events])
                else:
                    failed.append(i)
            pending = failed
        return [PredictionResult(clip, o, model_id=model.model_id) for clip, o in zip(batch, out)]


def caption_rows(pr: PredictionResult):
    clip, o = pr.example, pr.inference
    row = {k: clip.get(k) for k in ("id", "video_id", "partition", "source", "start", "end", "duration")}
    row.update(response=o.get("response"), attempts=o["attempts"], attempt_reasons=o["attempt_reasons"],
               model=o.get("model"), cached=o.get("cached"))
    if o["ok"]:
        yield accept(dict(row, caption=o["caption"], events=json.dumps(o["events"], ensure_ascii=False), n_events=len(o["events"])),
                     TRACK, "captions")
        return
    reason = o.get("reason") or "generation_error"
    detail = o.get("error") or (o.get("response") or "")[:300]
    yield reject(row, TRACK, "captions", reason, f"{o['attempts']} attempts ({', '.join(o['attempt_reasons'])}): {detail}")


class Caption(beam.PTransform):
    """Timestamped event captions from the VLM: one engine per worker for all drops, retries inside."""

    def __init__(self, root: str, settings: VideoSettings) -> None:
        super().__init__()
        self.handler = CaptionModelHandler(resolve_spec(root, settings.engine), settings.sampling, settings.retries,
                                           settings.event_format, settings.inference_batch_size)

    def expand(self, clips):
        r = (clips | "Caption" >> RunInference(self.handler)
             | "Check" >> beam.FlatMap(caption_rows).with_outputs("quarantine", main="ok"))
        return r.ok, r.quarantine


CAPTIONS = Stage(TRACK, "captions", ASSET["captions"], ASSET["clips"], (), lambda root, s: Caption(root, s),
                 schema=lambda root, parts: CAPTION_SCHEMA,
                 plan=lambda root, parts, s: {"engine": s.engine.kind, "model": resolve_spec(root, s.engine).model})


run_captions = CAPTIONS.runner("Event captions of every clip of the given drops.")


# ----------------------------------------------------------------------------------------------
# temporal grounding


def grounding_rows(cap: dict):
    """One sample per validated event; a description given to two events of a clip is ambiguous as a
    grounding query (two right answers), so all its events go to quarantine."""
    events = [video_captions.Event(e["start"], e["end"], e["description"]) for e in json.loads(cap["events"])]
    samples = video_captions.temporal_grounding_samples(cap["id"], events)
    counts = Counter(s["query"].strip().lower() for s in samples)
    for i, (e, s) in enumerate(zip(events, samples)):
        row = {"id": f"{cap['id']}_e{i:02d}", "clip_id": cap["id"], "video_id": cap["video_id"], "partition": cap["partition"],
               "source": cap["source"], "event_index": i, "query": s["query"], "answer": s["answer"], "start": e.start,
               "end": e.end, "clip_start": cap["start"], "clip_end": cap["end"]}
        if counts[s["query"].strip().lower()] > 1:
            yield reject(row, TRACK, "temporal_grounding", "ambiguous_query", f"{counts[s['query'].strip().lower()]} events share it")
            continue
        yield accept(row, TRACK, "temporal_grounding")


class Grounding(beam.PTransform):
    def expand(self, captions):
        r = captions | "Samples" >> beam.FlatMap(grounding_rows).with_outputs("quarantine", main="ok")
        return r.ok, r.quarantine


GROUNDING = Stage(TRACK, "temporal_grounding", ASSET["temporal_grounding"], ASSET["captions"], (),
                  lambda root, s: Grounding(), schema=lambda root, parts: GROUNDING_SCHEMA)


run_temporal_grounding = GROUNDING.runner("Temporal-grounding samples (query -> [start, end]) from the captions of the given drops.")


# ----------------------------------------------------------------------------------------------
# shards (corpus)


def image_fields(frames: Sequence[bytes]) -> dict[str, bytes]:
    """img000.jpg, img001.jpg ... in the order of the user turn's image parts (the trainer sorts names)."""
    return {f"img{i:03d}.jpg": bytes(f) for i, f in enumerate(frames)}


def answer_text(caption: str, events: Sequence[dict]) -> str:
    """The assistant turn in the format the caption prompt asks for."""
    lines = [f"Caption: {caption}", "Events:"] + [f"{e['timestamp']} {e['description']}" for e in events]
    return "\n".join(lines)


def caption_sample(clip: dict, cap: dict) -> shards.Sample:
    events = json.loads(cap["events"])
    msgs = video_captions.caption_messages(list(clip["frames"]), list(clip["frame_times"]), clip["duration"])
    user = [{"type": "image"} if p.get("type") == "image" else p for p in msgs[1]["content"]]
    obj = {"id": clip["id"], "task": "video_caption",
           "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer_text(cap["caption"], events)}],
           "video_id": clip["video_id"], "source": clip["source"], "partition": clip["partition"],
           "clip_start": clip["start"], "clip_end": clip["end"], "frame_times": list(clip["frame_times"]),
           "events": events, "model": cap["model"]}
    meta = {"id": clip["id"], "video_id": clip["video_id"], "source": clip["source"], "clip_start": clip["start"],
            "clip_end": clip["end"], "n_frames": len(clip["frames"]), "n_events": len(events), "model": cap["model"]}
    return shards.Sample(key=clip["id"], fields={**image_fields(clip["frames"]),
                                                 "json": json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()},
                         metadata=meta)


def grounding_sample(clip: dict, g: dict) -> shards.Sample:
    end = video_captions.format_timestamp(float(np.ceil(clip["duration"] - 1e-9)))
    text = GROUNDING_TEMPLATE.format(n=len(clip["frames"]), duration=end, query=g["query"])
    obj = {"id": g["id"], "task": "temporal",
           "messages": [{"role": "user", "content": video_captions.frame_parts(clip["frame_times"]) + [{"type": "text", "text": text}]},
                        {"role": "assistant", "content": g["answer"]}],
           "video_id": g["video_id"], "clip_id": g["clip_id"], "source": g["source"], "partition": g["partition"],
           "clip_start": g["clip_start"], "clip_end": g["clip_end"], "query": g["query"], "answer": g["answer"],
           "frame_times": list(clip["frame_times"])}
    meta = {"id": g["id"], "video_id": g["video_id"], "source": g["source"], "clip_start": g["clip_start"],
            "clip_end": g["clip_end"], "n_frames": len(clip["frames"]), "n_events": 1, "model": None}
    return shards.Sample(key=g["id"], fields={**image_fields(clip["frames"]),
                                              "json": json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()},
                         metadata=meta)


SHARD_METADATA_SCHEMA = pa.schema([
    ("id", pa.string()), ("video_id", pa.string()), ("source", pa.string()), ("clip_start", pa.float64()),
    ("clip_end", pa.float64()), ("n_frames", pa.int32()), ("n_events", pa.int32()), ("model", pa.string()),
])


VOLATILE_COLUMNS = frozenset({"cached"})  # differ between runs of the same content


def _join_clip_samples(element: tuple[tuple[str, str], dict], make) -> Iterator[shards.Sample]:  # noqa: ANN001
    """(partition, clip id) -> {clip, rows} joined: one sample per row, with the clip's frames."""
    (part, clip_id), joined = element
    clips, rows = list(joined["clip"]), list(joined["rows"])
    if rows and not clips:
        raise KeyError(f"video shards: clip {clip_id!r} of drop {part!r} not in {ASSET['clips']}")
    for r in rows:
        yield make(clips[0], r)


def run_shards(root: str, partitions: Sequence[str], settings: VideoSettings, argv: Sequence[str] = (),
               test_pipeline=None) -> dict[str, shards.ShardIndex]:  # noqa: ANN001
    """Both datasets: ``video`` (dense caption + events per clip) and ``temporal_grounding`` (one
    question per event, answer ``[mm:ss, mm:ss]``), as shards/<dataset>/<version>/ + LATEST.json.

    One Beam job: rows are joined to their clip's frames by (drop, clip id), then the shard stage
    (pipelines/shards.py) writes each dataset with one writer per shard."""
    from pipelines.shards import ShardSource, WriteShards

    clip_srcs = [manifest_url(root, ASSET["clips"], p) for p in partitions]
    plans = []
    for dataset, asset, make in (("video", ASSET["captions"], caption_sample),
                                 ("temporal_grounding", ASSET["temporal_grounding"], grounding_sample)):
        row_srcs = [manifest_url(root, asset, p) for p in partitions]
        version = content_version(clip_srcs + row_srcs, dataset, settings.samples_per_shard, settings.max_shard_bytes,
                                  ignore=VOLATILE_COLUMNS)
        plans.append((dataset, row_srcs, make, shards.shard_dir(root, dataset, version),
                      shards.input_lineage(clip_srcs + row_srcs, ignore=VOLATILE_COLUMNS)))

    def build(p):  # noqa: ANN001
        clips = (read_manifests(p, clip_srcs, "ReadClips")
                 | "KeyClips" >> beam.Map(lambda c: ((c["partition"], c["id"]), c)))
        for dataset, row_srcs, make, out_url, lineage in plans:
            label = "".join(w.title() for w in dataset.split("_"))
            rows = (read_manifests(p, row_srcs, f"Read{label}")
                    | f"Key{label}" >> beam.Map(lambda r: ((r["partition"], r.get("clip_id") or r["id"]), r)))
            ({"clip": clips, "rows": rows} | f"Join{label}" >> beam.CoGroupByKey()
             | f"{label}Samples" >> beam.FlatMap(_join_clip_samples, make)
             | f"{label}Shards" >> WriteShards(out_url, dataset_name=dataset, metadata_schema=SHARD_METADATA_SCHEMA,
                                               source=ShardSource(), lineage=lineage,
                                               samples_per_shard=settings.samples_per_shard,
                                               max_shard_bytes=settings.max_shard_bytes, publish_root=root))

    run_pipeline(argv, build, test_pipeline)
    return {dataset: shards.read_index(out_url) for dataset, _, _, out_url, _ in plans}


# ----------------------------------------------------------------------------------------------
# CLI


def run(argv: Sequence[str] | None = None, test_pipeline=None) -> None:  # noqa: ANN001
    """Command-line entry point (the same functions Dagster's assets call)."""
    parser = track_cli("python -m pipelines.video", __doc__, TRACK, STAGES)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "openai"])
    parser.add_argument("--model", default="models/tiny-qwen2_5_vl", help="VLM checkpoint folder (vllm) or served model name (openai)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (--engine openai)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--scene-threshold", type=float, default=video.DEFAULT_SCENE_THRESHOLD)
    parser.add_argument("--min-clip", type=float, default=2.0, help="seconds")
    parser.add_argument("--max-clip", type=float, default=30.0, help="seconds")
    parser.add_argument("--max-clips-per-video", type=int, default=None)
    parser.add_argument("--frames-per-clip", type=int, default=8)
    parser.add_argument("--frame-size", type=int, default=video.DEFAULT_FRAME_SIZE, help="longer side of frames, px")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    args, beam_argv = parser.parse_known_args(argv)
    stages, partitions = cli_plan(parser, args, STAGES, TRACK, list_partitions)
    options = {"dtype": "float32", "enforce_eager": True, "max_model_len": args.max_model_len} if args.engine == "vllm" else {}
    settings = VideoSettings(
        scene_threshold=args.scene_threshold, min_clip_s=args.min_clip, max_clip_s=args.max_clip,
        max_clips_per_video=args.max_clips_per_video, frames_per_clip=args.frames_per_clip, frame_size=args.frame_size,
        engine=EngineSpec(args.engine, args.model, base_url=args.base_url, options=options),
        sampling=generation.SamplingParams(n=1, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed),
        retries=args.retries, samples_per_shard=args.samples_per_shard)
    per_drop = {"probe": run_probe, "clips": run_clips, "captions": run_captions, "temporal_grounding": run_temporal_grounding}
    for stage in stages:
        if stage in per_drop:
            per_drop[stage](args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)  # every drop in one Beam job
        elif stage == "neardup":
            run_neardup(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
            rows = storage.read_records(manifest_url(args.root, ASSET["neardup"], CORPUS))
            print(json.dumps({"videos": len(rows), "representatives": sum(r["representative"] for r in rows)}))
        else:
            indexes = run_shards(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
            print(json.dumps({k: {"url": v.url, "samples": v.num_samples} for k, v in indexes.items()}))


if __name__ == "__main__":
    run()
