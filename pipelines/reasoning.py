"""Long-CoT synthesis with rejection sampling as Beam pipelines, runnable without Dagster.

    python -m pipelines.reasoning --root ./data --stages all --model models/tiny-causal-lm
    python -m pipelines.reasoning --root ./data --engine openai --base-url http://127.0.0.1:8000 --model NAME

| stage | scope | reads | writes |
|---|---|---|---|
| prompts | per drop | landing/reasoning/<drop>/*.jsonl|parquet, benchmarks/texts/*.jsonl | manifests/reasoning_prompts/<drop>.parquet |
| candidates | per drop | reasoning_prompts | manifests/cot_candidates/<drop>.parquet (n rows per prompt) |
| verified | per drop | reasoning_prompts, cot_candidates | manifests/cot_verified/<drop>.parquet, manifests/cot_prompt_stats/<drop>.parquet |
| sft_shards | corpus | cot_verified | shards/reasoning_sft/<version>/ |
| rl_pool | corpus | cot_prompt_stats, reasoning_prompts | manifests/rl_prompt_pool/all.parquet |

Rejected prompts and samples go to quarantine/<asset>/<drop>.parquet with their reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from curation import generation, reasoning, shards, storage
from pipelines.common import (
    Stage,
    StageResult,
    WriteManifest,
    accept,
    cli_plan,
    content_version,
    counters,
    landing_drops,
    manifest_url,
    quarantine_schema,
    quarantine_url,
    quarantined,
    reject,
    run_pipeline,
    split_dofn,
    track_cli,
)
from pipelines.generation import EngineSpec, GenerationModelHandler, resolve_spec

TRACK = "reasoning"
STAGES = ("prompts", "candidates", "verified", "sft_shards", "rl_pool")
CORPUS = "all"

PROMPT_SCHEMA = pa.schema([
    ("id", pa.string()), ("partition", pa.string()), ("source", pa.string()), ("question", pa.string()),
    ("gold", pa.string()), ("gold_text", pa.string()), ("choices", pa.list_(pa.string())), ("images", pa.list_(pa.string())),
])
CANDIDATE_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt_id", pa.string()), ("partition", pa.string()), ("sample_index", pa.int32()),
    ("text", pa.string()), ("finish_reason", pa.string()), ("n_tokens", pa.int32()), ("model", pa.string()),
    ("cached", pa.bool_()), ("error", pa.string()),
])
VERIFIED_SCHEMA = pa.schema(list(CANDIDATE_SCHEMA) + [
    ("answer", pa.string()), ("gold", pa.string()), ("pass_rate", pa.float32()), ("sft_sample", pa.string())])
STATS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("partition", pa.string()), ("n", pa.int32()), ("n_correct", pa.int32()),
    ("n_undecided", pa.int32()), ("pass_rate", pa.float32()), ("difficulty", pa.string()), ("n_accepted", pa.int32()),
    ("pool", pa.string()),
])
POOL_SCHEMA = pa.schema(list(PROMPT_SCHEMA) + [
    ("pass_rate", pa.float32()), ("difficulty", pa.string()), ("pool", pa.string())])


@dataclass(frozen=True)
class ReasoningSettings:
    """Knobs of the track; Dagster config and CLI flags map onto it."""

    engine: EngineSpec = field(default_factory=lambda: EngineSpec("vllm", "models/tiny-causal-lm"))
    vision_engine: EngineSpec | None = None  # prompts with images go here (a VLM); None: drop them
    sampling: generation.SamplingParams = field(default_factory=lambda: generation.SamplingParams(
        n=4, temperature=0.8, max_tokens=512, seed=0))
    system_prompt: str | None = "Think step by step inside <think>...</think>, then give the final answer as \\boxed{...}."
    cot: reasoning.CoTFilterConfig = field(default_factory=reasoning.CoTFilterConfig)
    decontamination_n: int = 13
    verify_workers: int = 2
    verify_timeout_s: float = 5.0
    easy_threshold: float = 0.9
    samples_per_shard: int = 10_000
    dataset: str = "reasoning_sft"


def list_partitions(root: str) -> list[str]:
    """Drop folders under landing/reasoning/ (sorted)."""
    return landing_drops(root, TRACK)


def _inputs(root: str, partition: str) -> list[str]:
    fs, path = storage.filesystem(storage.join(root, "landing", TRACK, partition))
    if not fs.exists(path):
        raise FileNotFoundError(f"drop not found: {storage.join(root, 'landing', TRACK, partition)}")
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    return sorted(protocol + p if protocol and not p.startswith(protocol) else p for p in fs.find(path)
                  if p.endswith((".jsonl", ".jsonl.gz", ".parquet")))


def benchmark_texts(root: str) -> dict[str, str]:
    """Benchmark questions to decontaminate against: benchmarks/texts/*.jsonl (id?, question|problem|text)."""
    fs, path = storage.filesystem(storage.join(root, "benchmarks", "texts"))
    out: dict[str, str] = {}
    if not fs.exists(path):
        return out
    for p in sorted(fs.find(path)):
        if not p.endswith(".jsonl"):
            continue
        name = p.rsplit("/", 1)[-1][: -len(".jsonl")]
        with fs.open(p, "rb") as f:
            for i, line in enumerate(f.read().decode("utf-8").splitlines()):
                if line.strip():
                    row = json.loads(line)
                    text = row.get("question") or row.get("problem") or row.get("text") or ""
                    out[f"{name}:{row.get('id', i)}"] = text
    return out


# ----------------------------------------------------------------------------------------------
# prompts


class CheckPrompt(beam.DoFn):
    """Gold verifiability and benchmark contamination, with reasons."""

    def __init__(self, bench: dict[str, str], n: int) -> None:
        self.bench, self.n = bench, n
        self.decon: reasoning.NGramDecontaminator | None = None

    def setup(self) -> None:
        self.decon = reasoning.NGramDecontaminator(self.bench, n=self.n) if self.bench else None

    def process(self, rec: dict):
        rec = dict(rec, choices=rec.get("choices") or [], images=rec.get("images") or [])
        verdict = reasoning.classify_gold(rec.get("gold"), rec.get("choices") or None)
        if not verdict.keep:
            yield reject(rec, TRACK, "prompts", verdict.reason)
            return
        if self.decon is not None:
            hit, bench_id = self.decon.is_contaminated(rec["question"] or "")
            if hit:
                yield reject(rec, TRACK, "prompts", "benchmark_contamination", f"overlaps {bench_id}")
                return
        yield accept(rec, TRACK, "prompts")


def prompt_rows(p, root: str, partitions: Sequence[str], settings: ReasoningSettings):  # noqa: ANN001
    """The prompt rows of every given drop, each tagged with its drop."""
    per_drop = []
    for i, part in enumerate(partitions):
        per_drop.append(p | f"Inputs[{i}]" >> beam.Create(_inputs(root, part)) | f"Load[{i}]" >> beam.FlatMap(reasoning.load_prompts)
                        | f"Tag[{i}]" >> beam.Map(lambda r, part=part: dict(r, partition=part)))
    return per_drop | "AllDrops" >> beam.Flatten()


class CheckPrompts(beam.PTransform):
    def __init__(self, root: str, settings: ReasoningSettings) -> None:
        super().__init__()
        self.bench, self.n = benchmark_texts(root), settings.decontamination_n

    def expand(self, recs):
        return split_dofn(recs, "Check", CheckPrompt(self.bench, self.n))


PROMPTS = Stage(TRACK, "prompts", "reasoning_prompts", None, (), lambda root, s: CheckPrompts(root, s), source=prompt_rows,
                schema=lambda root, parts: PROMPT_SCHEMA)


run_prompts = PROMPTS.runner("Prompts of the given drops with verifiable gold answers, benchmark-decontaminated.")


# ----------------------------------------------------------------------------------------------
# candidates


def to_request(rec: dict, system: str | None, image_loader=storage.read_bytes) -> generation.GenerationRequest:  # noqa: ANN001
    """A chat request for one prompt (images attached when the prompt has them)."""
    user: list | str = reasoning.format_user_prompt(rec)
    images = [image_loader(u) for u in rec.get("images") or []]
    if images:
        user = [*({"type": "image"} for _ in images), {"type": "text", "text": user}]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return generation.GenerationRequest(messages=messages, images=images, request_id=rec["id"])


def candidate_rows(result: generation.GenerationResult, partition: str) -> Iterable[dict]:
    """One row per sample (an errored request gives one row carrying the error)."""
    if result.error or not result.completions:
        yield {"id": f"{result.request_id}:0", "prompt_id": result.request_id, "partition": partition, "sample_index": 0,
               "text": None, "finish_reason": None, "n_tokens": None, "model": result.model, "cached": result.cached,
               "error": result.error or "no completions"}
        return
    for i, c in enumerate(result.completions):
        yield {"id": f"{result.request_id}:{i}", "prompt_id": result.request_id, "partition": partition, "sample_index": i,
               "text": c.text, "finish_reason": c.finish_reason, "n_tokens": c.n_completion_tokens, "model": result.model,
               "cached": result.cached, "error": None}


class Candidates(beam.PTransform):
    """n samples per prompt: text prompts to the reasoning LLM, image prompts to the VLM (one engine of
    each per worker, whatever the number of drops); the drop rides along as the inference key."""

    def __init__(self, root: str, settings: ReasoningSettings) -> None:
        super().__init__()
        self.settings = settings
        self.text_spec = resolve_spec(root, settings.engine)
        self.vision_spec = resolve_spec(root, settings.vision_engine) if settings.vision_engine else None

    def expand(self, prompts):
        s, system = self.settings, self.settings.system_prompt
        routed = prompts | "Route" >> beam.Partition(lambda r, _n: 1 if r.get("images") else 0, 2)
        texts, visuals = routed[0], routed[1]
        keyed = lambda r: (r["partition"], to_request(r, system))  # noqa: E731
        outs = [texts | "TextRequests" >> beam.Map(keyed)
                | "TextGenerate" >> RunInference(KeyedModelHandler(GenerationModelHandler(self.text_spec, s.sampling)))]
        if self.vision_spec is not None:
            outs.append(visuals | "VisionRequests" >> beam.Map(keyed)
                        | "VisionGenerate" >> RunInference(KeyedModelHandler(GenerationModelHandler(self.vision_spec, s.sampling))))
            skipped = prompts.pipeline | "NoSkipped" >> beam.Create([])
        else:
            skipped = visuals | "NoVLM" >> beam.Map(lambda r: reject(
                {"id": f"{r['id']}:0", "prompt_id": r["id"], "partition": r["partition"]}, TRACK, "candidates",
                "no_vision_engine").value)
        rows = (outs | "AllResults" >> beam.Flatten()
                | "Rows" >> beam.FlatMap(lambda kv: candidate_rows(kv[1].inference, kv[0])))
        return rows, skipped


CANDIDATES = Stage(TRACK, "candidates", "cot_candidates", "reasoning_prompts", (), lambda root, s: Candidates(root, s),
                   schema=lambda root, parts: CANDIDATE_SCHEMA,
                   plan=lambda root, parts, s: {"engine": s.engine.kind, "model": resolve_spec(root, s.engine).model,
                                                "n": s.sampling.n})


run_candidates = CANDIDATES.runner("Candidate solutions for every prompt of the given drops.")


# ----------------------------------------------------------------------------------------------
# verified


class VerifyPrompts(beam.DoFn):
    """Per batch of prompt groups: extract answers, verify in a bounded process pool (created in
    setup), apply the CoT filters, and emit accepted samples, per-prompt stats and rejections."""

    def __init__(self, settings: ReasoningSettings) -> None:
        self.settings = settings
        self.pool: reasoning.VerifierPool | None = None

    def setup(self) -> None:
        self.pool = reasoning.VerifierPool(workers=self.settings.verify_workers, timeout_s=self.settings.verify_timeout_s)

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def process(self, batch: list[tuple[str, dict]]):
        assert self.pool is not None
        s = self.settings
        groups = []
        pairs = []
        for prompt_id, grouped in batch:
            prompts, cands = list(grouped["prompt"]), sorted(grouped["candidates"], key=lambda c: c["sample_index"])
            if not prompts:
                for c in cands:
                    yield reject(c, TRACK, "verified", "unknown_prompt")
                continue
            prompt = prompts[0]
            usable = [c for c in cands if not c.get("error")]
            for c in cands:
                if c.get("error"):
                    yield reject(c, TRACK, "verified", "generation_error", c["error"])
            answers = [reasoning.extract_answer(c["text"] or "", require_think=s.cot.require_think,
                                                choices=prompt.get("choices") or None) for c in usable]
            groups.append((prompt, usable, answers, len(pairs)))
            pairs += [(prompt["gold"], a) for a in answers]
        outcomes = self.pool.verify_many(pairs) if pairs else []
        for prompt, usable, answers, start in groups:
            outs = outcomes[start : start + len(usable)]
            completions = [{"text": c["text"] or "", "finish_reason": c["finish_reason"], "n_tokens": c["n_tokens"]} for c in usable]
            stats = reasoning.score_prompt(prompt, completions, outs, s.cot)
            pool = reasoning.rl_pool_split(stats, s.easy_threshold)
            yield beam.pvalue.TaggedOutput("stats", {
                "prompt_id": prompt["id"], "partition": prompt["partition"], "n": stats.n, "n_correct": stats.n_correct,
                "n_undecided": stats.n_undecided, "pass_rate": stats.pass_rate, "difficulty": stats.difficulty,
                "n_accepted": len(stats.accepted), "pool": pool})
            for i, (c, a) in enumerate(zip(usable, answers)):
                row = dict(c, answer=a, gold=prompt["gold"], pass_rate=stats.pass_rate)
                if i in stats.accepted:
                    sft = reasoning.to_sft_sample(prompt, c["text"], system=s.system_prompt)
                    yield accept(dict(row, sft_sample=json.dumps(sft, ensure_ascii=False, sort_keys=True)), TRACK, "verified")
                else:
                    yield reject(row, TRACK, "verified", stats.rejected.get(i, "rejected"))


def prompts_with_candidates(p, root: str, partitions: Sequence[str], settings: ReasoningSettings):  # noqa: ANN001
    """(key, {prompt, candidates}) per prompt of the given drops, joined by (drop, prompt id), batched."""
    srcs = [(manifest_url(root, "reasoning_prompts", part), manifest_url(root, "cot_candidates", part)) for part in partitions]
    for src in (u for pair in srcs for u in pair):
        if not storage.exists(src):
            raise FileNotFoundError(f"verified: {src} missing")
    prompts = ([p | f"ReadPrompts[{i}]" >> beam.io.ReadFromParquet(ps) for i, (ps, _) in enumerate(srcs)]
               | "AllPrompts" >> beam.Flatten() | "KeyPrompts" >> beam.Map(lambda r: ((r["partition"], r["id"]), r)))
    cands = ([p | f"ReadCandidates[{i}]" >> beam.io.ReadFromParquet(cs) for i, (_, cs) in enumerate(srcs)]
             | "AllCandidates" >> beam.Flatten() | "KeyCands" >> beam.Map(lambda r: ((r["partition"], r["prompt_id"]), r)))
    return ({"prompt": prompts, "candidates": cands} | "Join" >> beam.CoGroupByKey()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=64))


class Verify(beam.PTransform):
    def __init__(self, settings: ReasoningSettings) -> None:
        super().__init__()
        self.settings = settings

    def expand(self, grouped):
        r = grouped | "Verify" >> beam.ParDo(VerifyPrompts(self.settings)).with_outputs("quarantine", "stats", main="ok")
        return r.ok, r.quarantine, {"cot_prompt_stats": (r.stats, STATS_SCHEMA)}


VERIFIED = Stage(TRACK, "verified", "cot_verified", None, (), lambda root, s: Verify(s), source=prompts_with_candidates,
                 schema=lambda root, parts: VERIFIED_SCHEMA)


run_verified = VERIFIED.runner("Rejection sampling over the candidates of the given drops; per-prompt pass rates to cot_prompt_stats.")


# ----------------------------------------------------------------------------------------------
# corpus stages


SFT_SHARD_SCHEMA = pa.schema([("prompt_id", pa.string()), ("pass_rate", pa.float32()), ("model", pa.string()),
                              ("answer", pa.string()), ("gold", pa.string())])


def _sft_shard_sample(r: dict) -> shards.Sample:
    return shards.Sample(key=r["id"], fields={"json": r["sft_sample"].encode()},
                         metadata={"prompt_id": r["prompt_id"], "pass_rate": r["pass_rate"], "model": r["model"],
                                   "answer": r["answer"], "gold": r["gold"]})


def run_sft_shards(root: str, partitions: Sequence[str], settings: ReasoningSettings, argv: Sequence[str] = (),
                   test_pipeline=None) -> shards.ShardIndex:  # noqa: ANN001
    """Accepted samples as chat-format SFT shards (key = sample id; json + txt of the messages), written
    by the Beam shard stage (pipelines/shards.py) under shards/<dataset>/<version>/ + LATEST.json."""
    from pipelines.shards import ShardSource, WriteShards, read_manifests

    srcs = [manifest_url(root, "cot_verified", p) for p in partitions]
    version = content_version(srcs, settings.dataset, settings.samples_per_shard)
    out_url = shards.shard_dir(root, settings.dataset, version)
    lineage = shards.input_lineage(srcs)

    def build(p):  # noqa: ANN001
        (read_manifests(p, srcs)
         | "SftShards" >> WriteShards(out_url, dataset_name=settings.dataset, metadata_schema=SFT_SHARD_SCHEMA,
                                      source=ShardSource(_sft_shard_sample), lineage=lineage,
                                      samples_per_shard=settings.samples_per_shard, publish_root=root))

    run_pipeline(argv, build, test_pipeline)
    return shards.read_index(out_url)


def _pool_rows(kv: tuple) -> Iterable[dict]:
    _key, g = kv
    for st in g["stats"]:
        for prompt in g["prompt"]:
            Metrics.counter(TRACK, f"rl_pool_{st['pool']}").inc()
            yield dict(prompt, pass_rate=st["pass_rate"], difficulty=st["difficulty"], pool=st["pool"])


def run_rl_pool(root: str, partitions: Sequence[str], settings: ReasoningSettings, argv: Sequence[str] = (),
                test_pipeline=None) -> dict[str, int]:  # noqa: ANN001
    """Every verified prompt with its pass rate and pool: 'rl', 'easy' (> easy_threshold: MiMo moves
    those out of RL into a re-sampling pool) or 'unsolved' (pass rate 0: a hard prompt or a bad gold).

    Prompts and their stats are joined by (drop, prompt id) in Beam and written to
    ``manifests/rl_prompt_pool/all.parquet`` (rows in any order: readers sort by id). Returns the
    number of prompts per pool."""
    srcs = [(manifest_url(root, "reasoning_prompts", part), manifest_url(root, "cot_prompt_stats", part)) for part in partitions]
    for src in (u for pair in srcs for u in pair):
        if not storage.exists(src):
            raise FileNotFoundError(f"rl_pool: {src} missing")

    def build(p):  # noqa: ANN001
        prompts = ([p | f"ReadPrompts[{i}]" >> beam.io.ReadFromParquet(ps) for i, (ps, _) in enumerate(srcs)]
                   | "AllPrompts" >> beam.Flatten() | "KeyPrompts" >> beam.Map(lambda r: ((r["partition"], r["id"]), r)))
        stats = ([p | f"ReadStats[{i}]" >> beam.io.ReadFromParquet(st) for i, (_, st) in enumerate(srcs)]
                 | "AllStats" >> beam.Flatten() | "KeyStats" >> beam.Map(lambda r: ((r["partition"], r["prompt_id"]), r)))
        ({"prompt": prompts, "stats": stats} | "Join" >> beam.CoGroupByKey() | "Rows" >> beam.FlatMap(_pool_rows)
         | "Write" >> WriteManifest(manifest_url(root, "rl_prompt_pool", CORPUS), POOL_SCHEMA))

    found = counters(run_pipeline(argv, build, test_pipeline), TRACK)
    return {k[len("rl_pool_"):]: v for k, v in found.items() if k.startswith("rl_pool_")}


def run(argv: Sequence[str] | None = None, test_pipeline=None) -> None:  # noqa: ANN001
    """Command-line entry point (the same functions Dagster's assets call)."""
    parser = track_cli("python -m pipelines.reasoning", __doc__, TRACK, STAGES)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "openai"])
    parser.add_argument("--model", default="models/tiny-causal-lm", help="checkpoint folder (vllm) or served model name (openai)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (--engine openai)")
    parser.add_argument("--vision-model", default=None, help="VLM checkpoint for prompts with images (in-process vLLM)")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args, beam_argv = parser.parse_known_args(argv)
    stages, partitions = cli_plan(parser, args, STAGES, TRACK, list_partitions)
    options = {"dtype": "float32", "enforce_eager": True} if args.engine == "vllm" else {}
    settings = ReasoningSettings(
        engine=EngineSpec(args.engine, args.model, base_url=args.base_url, options=options),
        vision_engine=EngineSpec("vllm", args.vision_model, options={"dtype": "float32", "enforce_eager": True}) if args.vision_model else None,
        sampling=generation.SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed))
    for stage in stages:
        if stage in ("prompts", "candidates", "verified"):
            fn = {"prompts": run_prompts, "candidates": run_candidates, "verified": run_verified}[stage]
            fn(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)  # every drop in one Beam job
        elif stage == "sft_shards":
            index = run_sft_shards(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
            print(json.dumps({"url": index.url, "samples": index.num_samples}))
        else:
            pools = run_rl_pool(args.root, partitions, settings, beam_argv, test_pipeline=test_pipeline)
            print(json.dumps({"prompts": sum(pools.values()), "pools": pools}))


if __name__ == "__main__":
    run()
