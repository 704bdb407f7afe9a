"""The video track as assets: probe -> same-footage clusters -> scene clips -> timestamped VLM captions
-> temporal-grounding samples -> shards (datasets ``video`` and ``temporal_grounding``)."""

import io
import json
import math
from collections import Counter

import dagster as dg

from assets.metadata import (
    chat_image_mismatches,
    counter_table,
    histogram_table,
    jpeg_data_uri,
    preview_table,
    rows,
    rows_of,
    run_drops,
    stage_links,
    stage_metadata,
)
from assets.partitions import video_drops, ready_partitions
from assets.resources import ENGINE_TAG, BeamResource, GenerationResource, StorageResource
from curation import generation, shards, video
from curation import video_captions as vcap
from curation import storage as fsio
from pipelines import video as pipe
from pipelines.common import manifest_url, quarantine_url

GROUP = "video"
EAGER = dg.AutomationCondition.eager()
ONE_JOB = dg.BackfillPolicy.single_run()  # a backfill of many drops: one run, one Beam job per asset
A = pipe.ASSET


# ----------------------------------------------------------------------------------------------
# Run configuration (editable in the launchpad)


class ProbeRunConfig(dg.Config):
    """Acceptance limits of curation.video.probe; probe_timeout_s bounds each ffprobe/ffmpeg call."""

    min_side: int = video.DEFAULT_LIMITS.min_side
    max_duration_s: float = video.DEFAULT_LIMITS.max_duration_s
    check_tail: bool = True
    probe_timeout_s: float = 60.0


class NearDupRunConfig(dg.Config):
    """Same footage: at least min_matches (None: a majority) of hash_positions aligned frames within k bits."""

    hash_positions: int = video.DEFAULT_POSITIONS
    phash_k: int = 10
    min_matches: int | None = None


class ClipRunConfig(dg.Config):
    """Scene cuts (ffmpeg scene score > threshold), clip lengths, frames per clip."""

    scene_threshold: float = video.DEFAULT_SCENE_THRESHOLD
    min_clip_s: float = 2.0
    max_clip_s: float = 30.0
    max_clips_per_video: int | None = None
    frames_per_clip: int = 8
    frame_size: int = video.DEFAULT_FRAME_SIZE


class CaptionRunConfig(dg.Config):
    """Sampling of the VLM's timestamped captions; a rejected answer is retried (seed + attempt)."""

    max_tokens: int = 384
    temperature: float = 0.7
    seed: int = 0
    retries: int = 2
    allow_overlap: bool = False


class VideoShardRunConfig(dg.Config):
    samples_per_shard: int = 1000
    max_shard_bytes: int = shards.DEFAULT_MAX_SHARD_BYTES


def settings(**overrides) -> pipe.VideoSettings:
    return pipe.VideoSettings(**{**pipe.VideoSettings().__dict__, **overrides})


def _ready(context: dg.AssetExecutionContext, root: str, upstream: str) -> list[str]:
    return ready_partitions(context, video_drops, root, upstream)


def _columns(url: str, columns: list[str]) -> list[dict]:
    """Some columns of a manifest (frames stay on disk unless asked for)."""
    return fsio.read_table(url, columns=columns).to_pylist() if fsio.exists(url) else []


def frame_strip(frames: list[bytes], height: int = 72, limit: int = 6) -> str:
    """A few frames pasted side by side into one small JPEG, as a markdown image (data URI)."""
    from PIL import Image

    imgs = [Image.open(io.BytesIO(f)).convert("RGB") for f in frames[:limit]]
    if not imgs:
        return "_no frames_"
    imgs = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in imgs]
    strip = Image.new("RGB", (sum(im.width for im in imgs) + 2 * (len(imgs) - 1), height), (255, 255, 255))
    x = 0
    for im in imgs:
        strip.paste(im, (x, 0))
        x += im.width + 2
    return f"![frames]({jpeg_data_uri(strip)})"


def _check(name: str, passed: bool, **md) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, passed=bool(passed), metadata=md)








# ----------------------------------------------------------------------------------------------
# Per-drop probe and the corpus-wide same-footage clusters


@dg.asset(partitions_def=video_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "ffmpeg", "parquet"},
          automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress(),
          check_specs=[dg.AssetCheckSpec("nothing_lost", asset="video_probe", description="every file of the drop is kept or quarantined"),
                       dg.AssetCheckSpec("ids_unique", asset="video_probe", description="no video id twice (exact copies are quarantined)")])
def video_probe(context: dg.AssetExecutionContext, config: ProbeRunConfig, storage: StorageResource,
                beam_runner: BeamResource) -> dg.MaterializeResult:
    """Every file of the drop probed (ffprobe + tail check); unreadable, audio-only, tiny or cut files quarantined."""
    parts = run_drops(context)
    limits = video.VideoLimits(min_side=config.min_side, max_duration_s=config.max_duration_s, check_tail=config.check_tail,
                               timeout_s=config.probe_timeout_s)
    res = pipe.run_probe(storage.root, parts, settings(limits=limits), beam_runner.argv())
    n_in = sum(len(pipe.drop_inputs(storage.root, p)) for p in parts)
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    md = stage_metadata(n_in, kept, dropped, *stage_links(res))
    md.update({
        "drops": dg.MetadataValue.text(", ".join(parts)),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "durations_s": dg.MetadataValue.md(histogram_table([r["duration_s"] for r in kept], [0, 2, 5, 10, 30, 60, 300, 3600, 1e9], "seconds")),
        "total_hours": dg.MetadataValue.float(round(sum(r["duration_s"] for r in kept) / 3600, 4)),
        "codecs": dg.MetadataValue.md(counter_table(Counter(r["codec"] for r in kept), "codec")),
        "resolutions": dg.MetadataValue.md(counter_table(Counter(f"{r['width']}x{r['height']}" for r in kept), "resolution")),
        "keyframe_interval_s": dg.MetadataValue.md(histogram_table([r["keyframe_interval_s"] for r in kept], [0, 0.5, 1, 2, 5, 10, 1e9], "seconds")),
        "preview": dg.MetadataValue.md(preview_table(kept, ("name", "duration_s", "width", "height", "fps", "codec"))),
    })
    ids = [r["id"] for r in kept]
    return dg.MaterializeResult(metadata=md, check_results=[
        _check("nothing_lost", len(kept) + len(dropped) == n_in, files=n_in, kept=len(kept), quarantined=len(dropped)),
        _check("ids_unique", len(ids) == len(set(ids)), duplicate_ids=len(ids) - len(set(ids))),
    ])


@dg.asset(group_name=GROUP, kinds={"beam", "parquet"}, deps=[video_probe], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("one_representative_per_cluster", asset="video_neardup_clusters"),
                       dg.AssetCheckSpec("nothing_lost", asset="video_neardup_clusters",
                                         description="every probed video is in a cluster or quarantined")])
def video_neardup_clusters(context: dg.AssetExecutionContext, config: NearDupRunConfig, storage: StorageResource,
                           beam_runner: BeamResource) -> dg.MaterializeResult:
    """Same-footage clusters over all drops (aligned-frame pHash majority); one representative per cluster."""
    parts = _ready(context, storage.root, A["probe"])
    s = settings(hash_positions=config.hash_positions, phash_k=config.phash_k, min_matches=config.min_matches)
    res = pipe.run_neardup(storage.root, parts, s, beam_runner.argv())
    murl, qurl = manifest_url(storage.root, A["neardup"], pipe.CORPUS), quarantine_url(storage.root, A["neardup"], pipe.CORPUS)
    table, dropped = rows(murl), rows(qurl)
    n_in = sum(len(_columns(manifest_url(storage.root, A["probe"], p), ["id"])) for p in parts)
    reps = [r for r in table if r["representative"]]
    md = stage_metadata(n_in, reps, dropped, murl, qurl)
    sizes = Counter(r["cluster"] for r in table)
    multi = [dict(r, size=sizes[r["cluster"]], name=r["source"].rsplit("/", 1)[-1]) for r in table if sizes[r["cluster"]] > 1]
    md.update({
        "partitions": dg.MetadataValue.text(", ".join(parts)),
        "plan": dg.MetadataValue.json(dict(res.plan)),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "clusters": dg.MetadataValue.int(len(sizes)),
        "duplicate_clusters": dg.MetadataValue.md(preview_table(sorted(multi, key=lambda r: (r["cluster"], not r["representative"])),
                                                                ("cluster", "name", "partition", "representative", "matches"), 40)),
    })
    reps_per_cluster = Counter(r["cluster"] for r in reps)
    hashed_ok = len(table) + sum(1 for r in dropped if r["reason"] != "near_duplicate")
    return dg.MaterializeResult(metadata=md, check_results=[
        _check("one_representative_per_cluster", all(reps_per_cluster[c] == 1 for c in sizes)),
        _check("nothing_lost", hashed_ok == n_in, probed=n_in, rows=len(table), hash_failures=hashed_ok - len(table)),
    ])


# ----------------------------------------------------------------------------------------------
# Per-drop clips, captions, grounding


@dg.asset(partitions_def=video_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "ffmpeg", "parquet"}, deps=[video_neardup_clusters],
          automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("nothing_lost", asset="video_clips", description="every representative video has clips or a quarantine row"),
                       dg.AssetCheckSpec("frames_per_clip", asset="video_clips", description="each clip has its frames, inside the clip")])
def video_clips(context: dg.AssetExecutionContext, config: ClipRunConfig, storage: StorageResource,
                beam_runner: BeamResource) -> dg.MaterializeResult:
    """Representative videos split at scene cuts into bounded clips, with frames sampled per clip (JPEG)."""
    parts = run_drops(context)
    s = settings(scene_threshold=config.scene_threshold, min_clip_s=config.min_clip_s, max_clip_s=config.max_clip_s,
                 max_clips_per_video=config.max_clips_per_video, frames_per_clip=config.frames_per_clip, frame_size=config.frame_size)
    res = pipe.run_clips(storage.root, parts, s, beam_runner.argv())
    kept = [r for u in res.manifests.values() for r in _columns(
        u, ["id", "video_id", "source", "start", "end", "duration", "video_duration", "cuts", "frame_times", "n_clips"])]
    dropped = rows_of(res.quarantines.values())
    wanted = set(parts)
    reps = {r["id"] for r in _columns(manifest_url(storage.root, A["neardup"], pipe.CORPUS), ["id", "partition", "representative"])
            if r["representative"] and r["partition"] in wanted}
    murl, qurl = stage_links(res)
    md = stage_metadata(len(reps), kept, dropped, murl, qurl)
    md["beam_counters"] = dg.MetadataValue.json(dict(res.counters))
    per_video = {r["video_id"]: r for r in kept}
    cuts_per_min = [len(r["cuts"]) / (r["video_duration"] / 60) for r in per_video.values() if r["video_duration"]]
    md.update({
        "records_in": dg.MetadataValue.int(len(reps)),  # videos in, clips out
        "videos": dg.MetadataValue.int(len(per_video)),
        "clips": dg.MetadataValue.int(len(kept)),
        "clips_per_video": dg.MetadataValue.md(counter_table(Counter(r["n_clips"] for r in per_video.values()), "clips planned")),
        "cuts_per_minute": dg.MetadataValue.md(histogram_table(cuts_per_min, [0, 1, 2, 5, 10, 20, 60, 1e9], "cuts / min")),
        "clip_lengths_s": dg.MetadataValue.md(histogram_table([r["duration"] for r in kept], 8, "seconds")),
        "preview": dg.MetadataValue.md(preview_table(kept, ("id", "start", "end", "n_clips"))),
    })
    if kept:
        first_url = next(u for u in res.manifests.values() if _columns(u, ["id"]))
        first = fsio.read_table(first_url, columns=["frames"]).slice(0, 1).to_pylist()[0]["frames"]
        md["frame_strip"] = dg.MetadataValue.md(f"{kept[0]['source'].rsplit('/', 1)[-1]} "
                                                f"[{kept[0]['start']:.1f}-{kept[0]['end']:.1f} s]\n\n{frame_strip(first)}")
    covered = {r["video_id"] for r in kept} | {r["video_id"] for r in dropped}
    bad_frames = [r["id"] for r in kept if not r["frame_times"] or not all(0 <= t < r["duration"] + 1e-6 for t in r["frame_times"])]
    return dg.MaterializeResult(metadata=md, check_results=[
        _check("nothing_lost", reps <= covered, missing=len(reps - covered)),
        _check("frames_per_clip", not bad_frames, bad_clips=len(bad_frames)),
    ])


@dg.asset(partitions_def=video_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "vllm"}, op_tags=ENGINE_TAG, deps=[video_clips], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("events_inside_clips", asset="video_captions",
                                         description="every event has 0 <= start < end <= the clip length (rounded up)"),
                       dg.AssetCheckSpec("nothing_lost", asset="video_captions", description="every clip is captioned or quarantined")])
def video_captions(context: dg.AssetExecutionContext, config: CaptionRunConfig, storage: StorageResource, vlm: GenerationResource,
                   beam_runner: BeamResource) -> dg.MaterializeResult:
    """Dense captions with [mm:ss, mm:ss] events from the VLM, validated; failures retried, then quarantined."""
    parts = run_drops(context)
    s = settings(engine=vlm.spec(), retries=config.retries,
                 sampling=generation.SamplingParams(n=1, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed),
                 event_format=vcap.EventFormat(allow_overlap=config.allow_overlap))
    res = pipe.run_captions(storage.root, parts, s, beam_runner.argv())
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    n_in = sum(len(_columns(manifest_url(storage.root, A["clips"], p), ["id"])) for p in parts)
    md = stage_metadata(n_in, kept, dropped, *stage_links(res))
    md["beam_counters"] = dg.MetadataValue.json(dict(res.counters))
    everything = kept + dropped
    md.update({
        "vlm": dg.MetadataValue.text(f"{vlm.kind}: {vlm.model}"),
        "attempts": dg.MetadataValue.md(counter_table(Counter(r["attempts"] for r in everything), "attempts")),
        "attempt_outcomes": dg.MetadataValue.md(counter_table(Counter(x for r in everything for x in r["attempt_reasons"] or []), "outcome")),
        "from_cache": dg.MetadataValue.int(sum(1 for r in everything if r["cached"])),
        "events_per_clip": dg.MetadataValue.md(histogram_table([r["n_events"] for r in kept], [1, 2, 3, 5, 10, 1e9], "events")),
        "caption_preview": dg.MetadataValue.md(preview_table(kept, ("id", "caption", "events"))),
        "rejected_preview": dg.MetadataValue.md(preview_table(dropped, ("id", "reason", "response"))),
    })
    outside = [r["id"] for r in kept for e in json.loads(r["events"])
               if not (0 <= e["start"] < e["end"] <= math.ceil(r["duration"] - 1e-9) + 1e-6)]
    return dg.MaterializeResult(metadata=md, check_results=[
        _check("events_inside_clips", not outside, events_outside=len(outside)),
        _check("nothing_lost", len(kept) + len(dropped) == n_in, clips=n_in, captioned=len(kept), quarantined=len(dropped)),
    ])


@dg.asset(partitions_def=video_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, deps=[video_captions], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("answers_parse", asset="temporal_grounding_samples",
                                         description="each answer parses back to its event's interval (the MORL temporal reward reads it)")])
def temporal_grounding_samples(context: dg.AssetExecutionContext, storage: StorageResource,
                               beam_runner: BeamResource) -> dg.MaterializeResult:
    """One 'when does <event> happen?' sample per validated event, answered [mm:ss, mm:ss]."""
    parts = run_drops(context)
    res = pipe.run_temporal_grounding(storage.root, parts, settings(), beam_runner.argv())
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    n_in = sum(r["n_events"] for p in parts for r in _columns(manifest_url(storage.root, A["captions"], p), ["n_events"]))
    md = stage_metadata(n_in, kept, dropped, *stage_links(res))
    md["beam_counters"] = dg.MetadataValue.json(dict(res.counters))
    md.update({
        "interval_lengths_s": dg.MetadataValue.md(histogram_table([r["end"] - r["start"] for r in kept], 8, "seconds")),
        "preview": dg.MetadataValue.md(preview_table(kept, ("clip_id", "query", "answer"))),
    })
    bad = [r["id"] for r in kept if vcap.parse_interval(r["answer"]) is None
           or vcap.temporal_iou_reward(vcap.format_interval(r["start"], r["end"]), r["answer"]) < 0.999]
    return dg.MaterializeResult(metadata=md, check_results=[_check("answers_parse", not bad, bad_answers=len(bad))])


# ----------------------------------------------------------------------------------------------
# Shards


@dg.asset(group_name=GROUP, kinds={"webdataset", "parquet"}, deps=[video_captions, temporal_grounding_samples], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("shard_integrity", asset="video_shards"),
                       dg.AssetCheckSpec("non_empty", asset="video_shards"),
                       dg.AssetCheckSpec("images_match", asset="video_shards",
                                         description="each sample has one image field per image part of its messages")])
def video_shards(context: dg.AssetExecutionContext, config: VideoShardRunConfig, storage: StorageResource) -> dg.MaterializeResult:
    """Chat-format shards: 'video' (frames -> dense caption + events) and 'temporal_grounding' (frames + query -> interval)."""
    parts = _ready(context, storage.root, A["temporal_grounding"])
    indexes = pipe.run_shards(storage.root, parts, settings(samples_per_shard=config.samples_per_shard,
                                                            max_shard_bytes=config.max_shard_bytes))
    problems, mismatched, preview = [], 0, None
    for index in indexes.values():
        problems += [x for url in index.tar_urls for x in shards.verify_shard(url)]
        _, bad, first = chat_image_mismatches(index, keep=1)
        mismatched += len(bad)
        if first and index.dataset == "video":
            s = first[0]
            obj = json.loads(s.fields["json"])
            imgs = sorted(f for f in s.fields if f.startswith("img"))
            preview = (f"{obj['source'].rsplit('/', 1)[-1]} [{obj['clip_start']:.1f}-{obj['clip_end']:.1f} s]\n\n"
                       f"{frame_strip([s.fields[f] for f in imgs])}\n\n```\n{obj['messages'][1]['content'][:600]}\n```")
    md = {"partitions": dg.MetadataValue.text(", ".join(parts))}
    for name, index in indexes.items():
        md[f"{name}_shards_url"] = dg.MetadataValue.path(index.url)
        md[f"{name}_samples"] = dg.MetadataValue.int(index.num_samples)
        md[f"{name}_bytes"] = dg.MetadataValue.int(index.total_bytes)
    md["sample_preview"] = dg.MetadataValue.md(preview or "_empty_")
    return dg.MaterializeResult(metadata=md, check_results=[
        _check("shard_integrity", not problems, problems=dg.MetadataValue.text("\n".join(problems) or "none")),
        dg.AssetCheckResult(check_name="non_empty", passed=all(i.num_samples > 0 for i in indexes.values()),
                            severity=dg.AssetCheckSeverity.WARN,  # a random demo VLM passes no caption
                            metadata={"samples": ", ".join(f"{k}: {v.num_samples}" for k, v in indexes.items())}),
        _check("images_match", mismatched == 0, mismatched_samples=mismatched),
    ])


ASSETS = [video_probe, video_neardup_clusters, video_clips, video_captions, temporal_grounding_samples, video_shards]
INGEST_ASSETS = ["video_probe"]
