"""The image-caption track as assets: one per stage of pipelines.image_text, partitioned per drop
where the work is per record, unpartitioned where it needs the whole corpus."""


import json
from collections import Counter

import dagster as dg
import numpy as np

from assets.metadata import (
    counter_table,
    histogram_table,
    preview_table,
    rows,
    rows_of,
    run_drops,
    stage_metadata,
)
from assets.partitions import image_text_drops
from assets.resources import ENGINE_TAG, BeamResource, ClipModelResource, GenerationResource, StorageResource
from curation import clip_score, metaclip, phash, shards, text_quality
from curation import storage as fsio
from pipelines import image_text as pipe
from pipelines.common import StageResult, manifest_url, quarantine_url

GROUP = "image_text"
EAGER = dg.AutomationCondition.eager()
# A backfill over many drops is one run and one Beam job per asset (the stage runs all its drops at once).
ONE_JOB = dg.BackfillPolicy.single_run()


# ----------------------------------------------------------------------------------------------
# Run configuration (editable in the launchpad)


class NearDupConfig(dg.Config):
    """pHash near-dup search: Hamming radius for the corpus and for benchmark images."""

    hamming_k: int = phash.DEFAULT_THRESHOLD
    benchmark_k: int = phash.DEFAULT_THRESHOLD
    engine: str = "auto"  # ignored (old configs): the pipeline always runs the distributed dedup


class CaptionQualityRunConfig(dg.Config):
    """Caption filter thresholds (defaults: OBELICS-derived values, see curation/text_quality.py)."""

    min_words: int = text_quality.DEFAULT_CONFIG.min_words
    max_words: int | None = text_quality.DEFAULT_CONFIG.max_words
    allowed_languages: list[str] = list(text_quality.DEFAULT_CONFIG.allowed_languages or ())


class ClipRunConfig(dg.Config):
    """Keep the top fraction by CLIP score (DataComp style) or everything above an absolute score."""

    keep_top_fraction: float | None = 0.9
    min_score: float | None = None


class MetadataRunConfig(dg.Config):
    """MetaCLIP metadata sources: WordNet + top English / Chinese words + an optional user file."""

    en_unigrams: int = metaclip.DEFAULT_EN_UNIGRAMS
    zh_words: int = metaclip.DEFAULT_ZH
    extra_entries: str | None = None


class BalanceRunConfig(dg.Config):
    """MetaCLIP balancing: t (None: scaled with corpus size) and the MetaCLIP version (1 or 2)."""

    t: int | None = None
    version: int = 1


class ShardRunConfig(dg.Config):
    samples_per_shard: int = 10_000
    max_shard_bytes: int = 1 << 30
    dataset: str = "image_text"


def settings(clip: ClipModelResource | None = None, **overrides) -> pipe.ImageTextSettings:
    base = pipe.ImageTextSettings()
    kw = {}
    if clip is not None:
        kw.update(clip_model=clip.model, clip_pretrained=clip.pretrained, clip_batch_size=clip.batch_size)
    kw.update(overrides)
    return pipe.ImageTextSettings(**{**base.__dict__, **kw})


def _materialized_partitions(context: dg.AssetExecutionContext, storage_res: StorageResource, upstream: str) -> list[str]:
    """Registered drops whose upstream manifest exists (sorted: precedence order)."""
    keys = context.instance.get_dynamic_partitions(image_text_drops.name)
    ready = [p for p in sorted(keys) if fsio.exists(manifest_url(storage_res.root, upstream, p))]
    if not ready:
        raise dg.Failure(f"no partition of {upstream} is materialized yet (registered drops: {sorted(keys)})")
    return ready






def _result(context: dg.AssetExecutionContext, root: str, asset: str, partitions: list[str], n_in: int,
            extra: dict | None = None, preview_cols: tuple[str, ...] = ("id", "caption"),
            stage: StageResult | None = None) -> dg.MaterializeResult:
    murls = [manifest_url(root, asset, p) for p in partitions]
    qurls = [quarantine_url(root, asset, p) for p in partitions]
    kept, dropped = rows_of(murls), rows_of(qurls)
    one = len(partitions) == 1
    md = stage_metadata(n_in, kept, dropped, murls[0] if one else fsio.join(root, "manifests", asset),
                        qurls[0] if one else fsio.join(root, "quarantine", asset))
    md["drops"] = dg.MetadataValue.text(", ".join(partitions))
    md["preview"] = dg.MetadataValue.md(preview_table(kept, preview_cols))
    if stage is not None:
        md["beam_counters"] = dg.MetadataValue.json(dict(stage.counters))
        if stage.plan:
            md["plan"] = dg.MetadataValue.json(json.loads(json.dumps(dict(stage.plan), default=str)))
    md.update(extra or {})
    ids = [r["id"] for r in kept]
    dup_ids = len(ids) - len(set(ids))
    expected = {f for f in (kept[0].keys() if kept else [])}
    return dg.MaterializeResult(
        metadata=md,
        check_results=[
            dg.AssetCheckResult(check_name="ids_unique", passed=dup_ids == 0, metadata={"duplicate_ids": dup_ids}),
            dg.AssetCheckResult(check_name="schema", passed="id" in expected or not kept,
                                metadata={"columns": dg.MetadataValue.text(", ".join(sorted(expected)))}),
        ],
    )


def _n_in(root: str, asset: str, partitions: list[str]) -> int:
    return sum(_n_rows(manifest_url(root, asset, p)) for p in partitions)


def _n_rows(url: str) -> int:
    return len(rows(url))


def _checks(name: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("ids_unique", asset=name, description="no record id appears twice"),
            dg.AssetCheckSpec("schema", asset=name, description="manifest has the id column")]


# ----------------------------------------------------------------------------------------------
# Per-drop assets


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, check_specs=_checks("image_text_samples"),
          automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress())
def image_text_samples(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """Image-caption pairs of one drop: ingested, format-sniffed and validated, with stable ids."""
    parts = run_drops(context)
    res = pipe.run_samples(storage.root, parts, settings(), beam_runner.argv())
    kept = rows_of(res.manifests.values())
    dropped = rows_of(res.quarantines.values())
    extra = {
        "formats": dg.MetadataValue.md(counter_table(Counter(r["format"] for r in kept), "format")),
        "image_side_px": dg.MetadataValue.md(histogram_table([min(r["width"], r["height"]) for r in kept], 10, "shorter side")),
        "caption_chars": dg.MetadataValue.md(histogram_table([len(r["caption"] or "") for r in kept], 10, "caption chars")),
        "landing": dg.MetadataValue.path(pipe.landing_url(storage.root, parts[0]) if len(parts) == 1
                                         else storage.url("landing", pipe.TRACK)),
    }
    return _result(context, storage.root, "image_text_samples", parts, len(kept) + len(dropped), extra,
                   ("id", "format", "width", "height", "caption"), res)


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, deps=[image_text_samples],
          check_specs=_checks("image_phash"), automation_condition=EAGER)
def image_phash(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """64-bit pHash (imagehash definition) of every valid image, decoded in JPEG draft mode."""
    parts = run_drops(context)
    res = pipe.run_phash(storage.root, parts, settings(), beam_runner.argv())
    n_in = _n_in(storage.root, "image_text_samples", parts)
    return _result(context, storage.root, "image_phash", parts, n_in, preview_cols=("id", "phash", "caption"), stage=res)


@dg.asset(group_name="decontamination", kinds={"beam", "parquet"}, automation_condition=dg.AutomationCondition.missing())
def benchmark_fingerprints(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """pHashes of the benchmark images under benchmarks/images/ (near-dups of them are removed)."""
    pipe.run_fingerprints(storage.root, settings(), beam_runner.argv())
    kept = rows(manifest_url(storage.root, "benchmark_fingerprints", pipe.CORPUS))
    dropped = rows(quarantine_url(storage.root, "benchmark_fingerprints", pipe.CORPUS))
    return dg.MaterializeResult(metadata={
        "benchmark_images": dg.MetadataValue.int(len(kept)),
        "unreadable": dg.MetadataValue.int(len(dropped)),
        "folder": dg.MetadataValue.path(storage.url("benchmarks", "images")),
    })


@dg.asset(group_name=GROUP, kinds={"beam", "parquet"}, deps=[image_phash, benchmark_fingerprints], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("one_representative_per_cluster", asset="image_neardup_clusters")])
def image_neardup_clusters(context: dg.AssetExecutionContext, config: NearDupConfig, storage: StorageResource,
                           beam_runner: BeamResource) -> dg.MaterializeResult:
    """Exact and pHash near-duplicates over all drops (earlier drops win), and benchmark near-dups."""
    parts = _materialized_partitions(context, storage, "image_phash")
    s = settings(hamming_k=config.hamming_k, benchmark_k=config.benchmark_k, neardup_engine=config.engine)
    res = pipe.run_neardup(storage.root, parts, s, beam_runner.argv())
    kept, dropped, n_in = [], [], 0
    for p in parts:
        n_in += _n_rows(manifest_url(storage.root, "image_phash", p))
        kept += rows(manifest_url(storage.root, "image_neardup_clusters", p))
        dropped += rows(quarantine_url(storage.root, "image_neardup_clusters", p))
    pairs = rows(manifest_url(storage.root, "image_neardup_clusters", "_pairs"))
    near = [r["hamming"] for r in pairs if r["kind"] == "near"]
    reps_per_cluster = Counter(r["cluster_id"] for r in kept)
    md = stage_metadata(n_in, kept, dropped, storage.url("manifests", "image_neardup_clusters"),
                        storage.url("quarantine", "image_neardup_clusters"))
    md.update({
        "partitions": dg.MetadataValue.text(", ".join(parts)),
        "hamming_k": dg.MetadataValue.int(config.hamming_k),
        "search_plan": dg.MetadataValue.text(res.plan["search_plan"]),  # the plan the pipeline ran
        "benchmark_plan": dg.MetadataValue.text(res.plan["benchmark_plan"] or "no benchmark images"),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "near_dup_pairs": dg.MetadataValue.int(len(near)),
        "benchmark_pairs": dg.MetadataValue.int(len(pairs) - len(near)),
        "hamming_distances": dg.MetadataValue.md(histogram_table(near, list(range(0, config.hamming_k + 2)), "hamming")),
        "largest_clusters": dg.MetadataValue.md(counter_table(Counter(r["cluster_id"] for r in dropped), "cluster (representative kept)")),
        "dropped_preview": dg.MetadataValue.md(preview_table(dropped, ("id", "reason", "dup_of", "hamming", "caption"))),
    })
    return dg.MaterializeResult(metadata=md, check_results=[
        dg.AssetCheckResult(check_name="one_representative_per_cluster", passed=max(reps_per_cluster.values(), default=1) == 1)])


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, deps=[image_neardup_clusters],
          check_specs=_checks("caption_quality"), automation_condition=EAGER)
def caption_quality(context: dg.AssetExecutionContext, config: CaptionQualityRunConfig, storage: StorageResource,
                    beam_runner: BeamResource) -> dg.MaterializeResult:
    """Captions filtered for length, repetition, special characters, stop words and language."""
    parts = run_drops(context)
    base = text_quality.CaptionQualityConfig()
    cfg = text_quality.CaptionQualityConfig(**{**base.__dict__, "min_words": config.min_words, "max_words": config.max_words,
                                               "allowed_languages": tuple(config.allowed_languages) or None})
    res = pipe.run_quality(storage.root, parts, settings(caption=cfg), beam_runner.argv())
    kept = rows_of(res.manifests.values())
    n_in = _n_in(storage.root, "image_neardup_clusters", parts)
    extra = {
        "languages": dg.MetadataValue.md(counter_table(Counter(r["caption_lang"] for r in kept), "language")),
        "caption_words": dg.MetadataValue.md(histogram_table([len((r["caption"] or "").split()) for r in kept], 10, "words")),
    }
    return _result(context, storage.root, "caption_quality", parts, n_in, extra, ("id", "caption_lang", "caption"), res)


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "pytorch"}, deps=[caption_quality],
          check_specs=_checks("clip_scores"), automation_condition=EAGER)
def clip_scores(context: dg.AssetExecutionContext, config: ClipRunConfig, storage: StorageResource, clip: ClipModelResource,
                beam_runner: BeamResource) -> dg.MaterializeResult:
    """open_clip cosine image-text similarity; the lowest-scoring pairs are dropped (DataComp style)."""
    parts = run_drops(context)
    cfg = clip_score.ClipFilterConfig(min_score=config.min_score) if config.min_score is not None else \
        clip_score.ClipFilterConfig(keep_top_fraction=config.keep_top_fraction)
    res = pipe.run_clip(storage.root, parts, settings(clip, clip_filter=cfg), beam_runner.argv())
    kept = rows_of(res.manifests.values())
    dropped = rows_of(res.quarantines.values())
    scores = [r["clip_score"] for r in kept] + [r["clip_score"] for r in dropped if r.get("clip_score") is not None]
    extra = {
        "clip_model": dg.MetadataValue.text(f"{clip.model} {clip.pretrained or ''}".strip()),
        "clip_score_distribution": dg.MetadataValue.md(histogram_table(scores, 12, "CLIP score")),
        "clip_score_mean": dg.MetadataValue.float(float(np.mean(scores)) if scores else 0.0),
    }
    n_in = _n_in(storage.root, "caption_quality", parts)
    return _result(context, storage.root, "clip_scores", parts, n_in, extra, ("id", "clip_score", "caption"), res)


# ----------------------------------------------------------------------------------------------
# MetaCLIP


@dg.asset(group_name=GROUP, kinds={"wordnet", "text"}, automation_condition=dg.AutomationCondition.missing(), code_version="1")
def metaclip_metadata(context: dg.AssetExecutionContext, config: MetadataRunConfig, storage: StorageResource) -> dg.MaterializeResult:
    """MetaCLIP metadata entries: WordNet lemmas, frequent English and Chinese words, user entries."""
    path = pipe.ImageTextSettings().resolve(storage.root, pipe.ImageTextSettings.metadata_path)
    sources = metaclip.metadata_sources(en_unigrams=config.en_unigrams, zh=config.zh_words, extra=config.extra_entries)
    entries = metaclip.merge_entries(s.entries for s in sources)
    sidecar = metaclip.save_metadata(path, entries, sources)
    return dg.MaterializeResult(metadata={
        "entries": dg.MetadataValue.int(len(entries)),
        "version": dg.MetadataValue.text(sidecar["version"][:16]),
        "sources": dg.MetadataValue.md(counter_table({s["name"]: s["count"] for s in sidecar["sources"]}, "source")),
        "path": dg.MetadataValue.path(path),
        "sample_entries": dg.MetadataValue.text(", ".join(entries[:: max(1, len(entries) // 30)][:30])),
    })


@dg.asset(group_name=GROUP, kinds={"beam", "parquet"}, deps=[clip_scores, metaclip_metadata], automation_condition=EAGER)
def metaclip_entry_counts(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """Corpus-wide match counts per metadata entry (Aho-Corasick over space-padded entries)."""
    parts = _materialized_partitions(context, storage, "clip_scores")
    s = settings()
    res = pipe.run_metaclip_counts(storage.root, parts, s, beam_runner.argv())
    counts = rows(manifest_url(storage.root, "metaclip_entry_counts", pipe.CORPUS))
    t, n = pipe.metaclip_threshold(storage.root, s)
    top = {r["entry"]: r["count"] for r in counts}
    return dg.MaterializeResult(metadata={
        "partitions": dg.MetadataValue.text(", ".join(parts)),
        "plan": dg.MetadataValue.json(dict(res.plan)),
        "texts": dg.MetadataValue.int(n),
        "entries_matched": dg.MetadataValue.int(len(counts)),
        "t_auto": dg.MetadataValue.int(int(t)),
        "head_entries (count >= t)": dg.MetadataValue.int(sum(1 for r in counts if r["count"] >= t)),
        "top_entries": dg.MetadataValue.md(counter_table(top, "entry", 25)),
        "entry_count_distribution": dg.MetadataValue.md(histogram_table(np.log10([r["count"] for r in counts] or [1]), 8, "log10(count)")),
    })


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"}, deps=[clip_scores, metaclip_entry_counts],
          check_specs=_checks("metaclip_balanced"), automation_condition=EAGER)
def metaclip_balanced(context: dg.AssetExecutionContext, config: BalanceRunConfig, storage: StorageResource,
                      beam_runner: BeamResource) -> dg.MaterializeResult:
    """MetaCLIP balancing: head concepts sub-sampled to t with per-record seeded draws; tail kept."""
    parts = run_drops(context)
    s = settings(metaclip_t=config.t, metaclip_version=config.version)
    res = pipe.run_balance(storage.root, parts, s, beam_runner.argv())
    kept = rows_of(res.manifests.values())
    dropped = rows_of(res.quarantines.values())
    before = Counter(e for r in kept + dropped for e in (r.get("metaclip_entries") or []))
    after = Counter(e for r in kept for e in (r.get("metaclip_entries") or []))
    t, _ = pipe.metaclip_threshold(storage.root, s)
    extra = {
        "t": dg.MetadataValue.int(int(t)),
        "concept_counts_before_after": dg.MetadataValue.md(counter_table(before, "entry", 25, after, "after balancing")),
    }
    n_in = _n_in(storage.root, "clip_scores", parts)
    return _result(context, storage.root, "metaclip_balanced", parts, n_in, extra, ("id", "metaclip_entries", "caption"), res)


class RecaptionRunConfig(dg.Config):
    """VLM re-captioning: sampling and the acceptance checks of curation/recaption.py."""

    max_tokens: int = 96
    temperature: float = 0.2
    min_consistency: float = 0.3


@dg.asset(partitions_def=image_text_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "vllm"}, op_tags=ENGINE_TAG, deps=[metaclip_balanced],
          check_specs=_checks("recaptions"), automation_condition=EAGER)
def recaptions(context: dg.AssetExecutionContext, config: RecaptionRunConfig, storage: StorageResource, vlm: GenerationResource,
               beam_runner: BeamResource) -> dg.MaterializeResult:
    """Altogether-style re-captions from the VLM (image + original caption); rejected ones keep the original."""
    from dataclasses import replace

    from curation import generation, recaption

    parts = run_drops(context)
    s = settings(recaption_engine=vlm.spec(),
                 recaption_sampling=generation.SamplingParams(n=1, temperature=config.temperature, max_tokens=config.max_tokens),
                 recaption=replace(recaption.DEFAULT_CONFIG, min_consistency=config.min_consistency))
    res = pipe.run_recaption(storage.root, parts, s, beam_runner.argv())
    kept = rows_of(res.manifests.values())
    status = Counter(r["recaption_status"] for r in kept)
    extra = {
        "vlm": dg.MetadataValue.text(f"{vlm.kind}: {vlm.model}"),
        "recaption_status": dg.MetadataValue.md(counter_table(status, "status")),
        "recaptioned": dg.MetadataValue.int(status.get("ok", 0)),
        "consistency": dg.MetadataValue.md(histogram_table([r["recaption_consistency"] for r in kept
                                                            if r["recaption_consistency"] is not None], 10, "consistency")),
    }
    n_in = _n_in(storage.root, "metaclip_balanced", parts)
    return _result(context, storage.root, "recaptions", parts, n_in, extra, ("id", "caption", "recaption", "recaption_status"), res)


# ----------------------------------------------------------------------------------------------
# Shards


@dg.asset(group_name=GROUP, kinds={"webdataset", "parquet"}, deps=[recaptions], automation_condition=EAGER,
          check_specs=[dg.AssetCheckSpec("shard_integrity", asset="image_text_shards"),
                       dg.AssetCheckSpec("non_empty", asset="image_text_shards"),
                       dg.AssetCheckSpec("ids_unique", asset="image_text_shards")])
def image_text_shards(context: dg.AssetExecutionContext, config: ShardRunConfig, storage: StorageResource,
                      beam_runner: BeamResource) -> dg.MaterializeResult:
    """WebDataset shards (img2dataset layout: tar + parquet + stats json, index.json) of the kept pairs."""
    parts = _materialized_partitions(context, storage, "recaptions")
    s = settings(samples_per_shard=config.samples_per_shard, max_shard_bytes=config.max_shard_bytes, dataset=config.dataset)
    index = pipe.run_shards(storage.root, parts, s, argv=beam_runner.argv())
    problems = []
    for url in index.tar_urls:
        problems += shards.verify_shard(url)
    keys = [r["key"] for url in index.parquet_urls for r in fsio.read_records(url)]
    n_in = sum(_n_rows(manifest_url(storage.root, "image_text_samples", p)) + _n_rows(quarantine_url(storage.root, "image_text_samples", p))
               for p in parts)
    return dg.MaterializeResult(
        metadata={
            "shards_url": dg.MetadataValue.path(index.url),
            "version": dg.MetadataValue.text(index.version),
            "samples": dg.MetadataValue.int(index.num_samples),
            "shards": dg.MetadataValue.int(len(index.shards)),
            "bytes": dg.MetadataValue.int(index.total_bytes),
            "pairs_landed": dg.MetadataValue.int(n_in),
            "partitions": dg.MetadataValue.text(", ".join(parts)),
            "shard_list": dg.MetadataValue.md(preview_table([sh.to_json() for sh in index.shards], ("tar", "samples", "bytes", "sha256"), 50)),
        },
        check_results=[
            dg.AssetCheckResult(check_name="shard_integrity", passed=not problems, metadata={"problems": dg.MetadataValue.text("\n".join(problems) or "none")}),
            dg.AssetCheckResult(check_name="non_empty", passed=index.num_samples > 0),
            dg.AssetCheckResult(check_name="ids_unique", passed=len(keys) == len(set(keys))),
        ],
    )


ASSETS = [image_text_samples, image_phash, benchmark_fingerprints, image_neardup_clusters, caption_quality, clip_scores,
          metaclip_metadata, metaclip_entry_counts, metaclip_balanced, recaptions, image_text_shards]
