"""Long-CoT reasoning synthesis as assets: prompts -> candidates -> verified (rejection sampling)
-> SFT shards and the RL prompt pool."""

from collections import Counter

import dagster as dg

from assets.metadata import (
    counter_table,
    histogram_table,
    preview_table,
    rows,
    rows_of,
    run_drops,
    stage_links,
    stage_metadata,
)
from assets.partitions import reasoning_drops, ready_partitions
from assets.resources import ENGINE_TAG, BeamResource, GenerationResource, StorageResource
from curation import generation, shards
from pipelines import reasoning as pipe
from pipelines.common import manifest_url, quarantine_url

GROUP = "reasoning"
EAGER = dg.AutomationCondition.eager()
ONE_JOB = dg.BackfillPolicy.single_run()  # a backfill of many drops: one run, one Beam job per asset


class SamplingRunConfig(dg.Config):
    """Rejection sampling: n samples per prompt from the reasoning model."""

    n: int = 4
    temperature: float = 0.8
    max_tokens: int = 512
    seed: int = 0


class VerifyRunConfig(dg.Config):
    require_think: bool = True
    easy_threshold: float = 0.9
    verify_timeout_s: float = 5.0


def _settings(llm: GenerationResource | None = None, vlm: GenerationResource | None = None, **kw) -> pipe.ReasoningSettings:
    base = pipe.ReasoningSettings()
    if llm is not None:
        kw["engine"] = llm.spec()
    if vlm is not None:
        kw["vision_engine"] = vlm.spec()
    return pipe.ReasoningSettings(**{**base.__dict__, **kw})


def _ready(context: dg.AssetExecutionContext, root: str, upstream: str) -> list[str]:
    return ready_partitions(context, reasoning_drops, root, upstream)








@dg.asset(partitions_def=reasoning_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "parquet"},
          automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress())
def reasoning_prompts(context: dg.AssetExecutionContext, storage: StorageResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """Prompts with verifiable gold answers, decontaminated against benchmarks/texts/ (13-gram overlap)."""
    parts = run_drops(context)
    res = pipe.run_prompts(storage.root, parts, _settings(), beam_runner.argv())
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    md = stage_metadata(len(kept) + len(dropped), kept, dropped, *stage_links(res))
    md["beam_counters"] = dg.MetadataValue.json(dict(res.counters))
    md["sources"] = dg.MetadataValue.md(counter_table(Counter(r["source"] for r in kept), "source"))
    md["with_images"] = dg.MetadataValue.int(sum(1 for r in kept if r["images"]))
    md["preview"] = dg.MetadataValue.md(preview_table(kept, ("id", "question", "gold")))
    return dg.MaterializeResult(metadata=md)


@dg.asset(partitions_def=reasoning_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "vllm"}, op_tags=ENGINE_TAG, deps=[reasoning_prompts], automation_condition=EAGER)
def cot_candidates(context: dg.AssetExecutionContext, config: SamplingRunConfig, storage: StorageResource,
                   reasoning_llm: GenerationResource, vlm: GenerationResource, beam_runner: BeamResource) -> dg.MaterializeResult:
    """n sampled chains of thought per prompt (text prompts: reasoning model; prompts with images: the VLM)."""
    parts = run_drops(context)
    s = _settings(reasoning_llm, vlm, sampling=generation.SamplingParams(
        n=config.n, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed))
    res = pipe.run_candidates(storage.root, parts, s, beam_runner.argv())
    cands = rows_of(res.manifests.values())
    return dg.MaterializeResult(metadata={
        "drops": dg.MetadataValue.text(", ".join(parts)),
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "skipped": dg.MetadataValue.md(counter_table(Counter(r["reason"] for r in rows_of(res.quarantines.values())), "reason")),
        "prompts": dg.MetadataValue.int(len({r["prompt_id"] for r in cands})),
        "samples": dg.MetadataValue.int(len(cands)),
        "from_cache": dg.MetadataValue.int(sum(1 for r in cands if r["cached"])),
        "errors": dg.MetadataValue.int(sum(1 for r in cands if r["error"])),
        "finish_reasons": dg.MetadataValue.md(counter_table(Counter(r["finish_reason"] for r in cands), "finish reason")),
        "completion_tokens": dg.MetadataValue.md(histogram_table([r["n_tokens"] or 0 for r in cands], 10, "tokens")),
        "model": dg.MetadataValue.text(reasoning_llm.model),
    })


@dg.asset(partitions_def=reasoning_drops, backfill_policy=ONE_JOB, group_name=GROUP, kinds={"beam", "python"}, deps=[cot_candidates], automation_condition=EAGER)
def cot_verified(context: dg.AssetExecutionContext, config: VerifyRunConfig, storage: StorageResource,
                 beam_runner: BeamResource) -> dg.MaterializeResult:
    """Samples whose answer verifies against the gold (math_verify) and whose reasoning passes the filters."""
    from dataclasses import replace

    parts = run_drops(context)
    base = pipe.ReasoningSettings()
    s = _settings(cot=replace(base.cot, require_think=config.require_think), easy_threshold=config.easy_threshold,
                  verify_timeout_s=config.verify_timeout_s)
    res = pipe.run_verified(storage.root, parts, s, beam_runner.argv())
    kept, dropped = rows_of(res.manifests.values()), rows_of(res.quarantines.values())
    stats = rows_of(manifest_url(storage.root, "cot_prompt_stats", p) for p in parts)
    md = stage_metadata(len(kept) + len(dropped), kept, dropped, *stage_links(res))
    md.update({
        "beam_counters": dg.MetadataValue.json(dict(res.counters)),
        "pass_rate_distribution": dg.MetadataValue.md(histogram_table([s["pass_rate"] for s in stats if s["pass_rate"] is not None],
                                                                      [0, 0.001, 0.25, 0.5, 0.75, 0.9, 1.0001], "pass rate")),
        "difficulty": dg.MetadataValue.md(counter_table(Counter(s["difficulty"] for s in stats), "difficulty")),
        "pools": dg.MetadataValue.md(counter_table(Counter(s["pool"] for s in stats), "pool")),
        "preview": dg.MetadataValue.md(preview_table(kept, ("prompt_id", "answer", "gold", "pass_rate"))),
    })
    return dg.MaterializeResult(metadata=md)


@dg.asset(group_name=GROUP, kinds={"webdataset"}, deps=[cot_verified], automation_condition=EAGER)
def reasoning_sft_shards(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Accepted chains of thought as chat-format SFT samples in WebDataset shards."""
    parts = _ready(context, storage.root, "cot_verified")
    index = pipe.run_sft_shards(storage.root, parts, _settings())
    problems = [x for url in index.tar_urls for x in shards.verify_shard(url)]
    return dg.MaterializeResult(metadata={
        "shards_url": dg.MetadataValue.path(index.url), "samples": dg.MetadataValue.int(index.num_samples),
        "shards": dg.MetadataValue.int(len(index.shards)), "integrity_problems": dg.MetadataValue.int(len(problems)),
        "partitions": dg.MetadataValue.text(", ".join(parts)),
    })


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[cot_verified], automation_condition=EAGER)
def rl_prompt_pool(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """RL prompts with pass rates: 'rl', 'easy' (> 90% pass: re-sampling pool, as MiMo does), 'unsolved'."""
    parts = _ready(context, storage.root, "cot_prompt_stats")
    pools = pipe.run_rl_pool(storage.root, parts, _settings())
    return dg.MaterializeResult(metadata={
        "prompts": dg.MetadataValue.int(sum(pools.values())),
        "pools": dg.MetadataValue.md(counter_table(Counter(pools), "pool")),
        "path": dg.MetadataValue.path(manifest_url(storage.root, "rl_prompt_pool", pipe.CORPUS)),
    })


ASSETS = [reasoning_prompts, cot_candidates, cot_verified, reasoning_sft_shards, rl_prompt_pool]
