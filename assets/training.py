"""The trainer as assets: the four MiMo-VL pre-training stages and MORL, downstream of the shard assets.

Each stage reads the newest version of every shard dataset its mixture weights (shards/<dataset>/LATEST.json),
starts from the previous stage's final weights (stage 1: the base checkpoint of the ``trainer`` resource) and
writes checkpoints/<stage>/<run fingerprint>/ (checkpoints, final/, metrics.json, loss_curve.png). The
fingerprint hashes the stage config, the budget, the input shard versions and the starting weights, so a
re-materialization with the same inputs resumes (or returns) the same run, and new shards start a new one.
"""

import hashlib
import json
import math
from pathlib import Path

import dagster as dg

from assets.resources import StorageResource
from curation import storage as fsio

GROUP = "training"

# Data kind of a stage mixture -> the shard datasets (shards/<dataset>/) that feed it.
DATASETS: dict[str, tuple[str, ...]] = {
    "image_caption": ("image_text",),
    "interleaved": ("interleaved",),
    "long_document": ("interleaved",),  # documents are the long-context source; packing fills the stage's seq_len
    "ocr": ("ocr",),
    "grounding": ("grounding",),
    "video": ("video",),
    "reasoning": ("reasoning_sft",),
}
STAGES = {1: "stage1_projector_warmup", 2: "stage2_vision_language_alignment", 3: "stage3_multimodal_pretraining",
          4: "stage4_long_context_sft"}
# MORL task -> chat-format shard datasets whose last assistant turn is a verifiable answer.
RL_DATASETS: dict[str, tuple[str, ...]] = {"grounding": ("grounding",), "temporal": ("temporal_grounding",)}


class TrainerResource(dg.ConfigurableResource):
    """How the stages train: the base checkpoint and the default budget.

    The defaults are the demo's: the tiny local Qwen2.5-VL and a few steps per stage at a short sequence
    length, so `make run` trains on CPU in minutes. For the recipe set ``base_model`` to a Qwen2.5-VL
    checkpoint (e.g. a local copy of MiMo-VL-7B-SFT), ``max_steps: null`` (each stage's token budget from
    trainer/configs/stages.yaml), ``seq_len: null`` (the stage's own), ``dtype: bfloat16``, and launch
    the same stages with ``accelerate launch`` (README) for FSDP or DeepSpeed across GPUs.
    """

    base_model: str = "models/tiny-qwen2_5_vl"  # relative to the storage root, or an absolute path
    stages_config: str | None = None  # default: trainer/configs/stages.yaml
    max_steps: int | None = 4
    seq_len: int | None = 1024
    max_pixels: int | None = 200_704  # 448x448: bounds image tokens on CPU; null: the processor's default
    dtype: str = "float32"
    cpu: bool = False  # force CPU even where an accelerator is present
    verify_freezing: bool = True  # compare weights before/after (two model loads; turn off for 7B runs)
    morl_max_steps: int = 3
    morl_num_generations: int = 2
    morl_prompts_per_step: int = 2
    morl_max_completion_length: int = 24
    morl_samples_per_task: int = 16

    def model_path(self, root: str) -> str:
        p = Path(self.base_model)
        if p.is_absolute() or p.exists():
            return str(p)
        local = fsio.local_path(fsio.join(root, self.base_model))
        if local and Path(local).exists():
            return local
        return self.base_model  # a hub id where a hub is reachable


class StageRunConfig(dg.Config):
    """Per-run overrides of the stage (unset: the trainer resource's budget, then the stages config)."""

    max_steps: int | None = None
    lr: float | None = None
    seq_len: int | None = None
    micro_batch_size: int | None = None
    grad_accum_steps: int | None = None
    token_budget: int | None = None
    warmup_steps: int | None = None
    resume: str = "auto"  # auto: newest checkpoint of this run (crash recovery); none: start over


class MORLRunConfig(dg.Config):
    """Per-run MORL overrides (unset: the trainer resource's)."""

    max_steps: int | None = None
    num_generations: int | None = None
    learning_rate: float = 1e-6
    easy_pool_prob: float = 0.1
    dynamic_sampling: bool = True


def _local_root(storage: StorageResource) -> Path:
    local = fsio.local_path(storage.root)
    if not local:
        raise dg.Failure(f"training writes checkpoints to a local or mounted filesystem; the storage root "
                         f"{storage.root} is remote: mount it (gcsfuse, s3fs) or set a local root")
    return Path(local)


def latest_shards(root: str, dataset: str) -> str | None:
    """The newest version folder of shards/<dataset>/, or None when it was never written or holds no
    samples (a curation run can keep nothing, e.g. every caption of a random-init VLM rejected)."""
    from curation import shards

    url = shards.latest_url(root, dataset)
    return url if url and shards.read_index(url).num_samples > 0 else None


def stage_sources(root: str, weights: dict[str, float]) -> tuple[list[str], dict[str, str], list[str]]:
    """(KIND=URL specs, dataset -> version url, weighted kinds with no (non-empty) shards yet)."""
    specs, used, missing = [], {}, []
    for kind, w in sorted(weights.items()):
        if w <= 0:
            continue
        found = False
        for ds in DATASETS.get(kind, ()):
            url = latest_shards(root, ds)
            if url:
                specs.append(f"{kind}={url}")
                used[ds] = url
                found = True
        if not found:
            missing.append(kind)
    return specs, used, missing


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _final_of(root: Path, stage: int) -> str:
    latest = root / "checkpoints" / STAGES[stage] / "LATEST.json"
    if not latest.exists():
        raise dg.Failure(f"{STAGES[stage]} has no finished run yet: materialize it first")
    return json.loads(latest.read_text())["final"]


def loss_table(losses: list[float], rows: int = 16) -> str:
    """The loss curve as a markdown table with bars (evenly spaced steps, first and last included)."""
    if not losses:
        return "_no steps_"
    n = len(losses)
    idx = sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(min(rows, n))})
    finite = [v for v in losses if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    lines = ["| step | loss | |", "|---:|---:|---|"]
    for i in idx:
        v = losses[i]
        bar = "█" * (1 + round(19 * (v - lo) / (hi - lo))) if math.isfinite(v) and hi > lo else "█"
        lines.append(f"| {i + 1} | {v:.4f} | {bar} |")
    return "\n".join(lines)


def plot_curves(path: Path, series: dict[str, list[float | None]], ylabel: str) -> str:
    """Write a PNG of the curves (matplotlib, headless) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, ys in series.items():
        pts = [(i + 1, y) for i, y in enumerate(ys) if y is not None and math.isfinite(y)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _params_table(counts: dict[str, dict[str, int]], changes: dict[str, dict[str, int]] | None) -> str:
    lines = ["| module | trainable | total |" + (" tensors changed | unchanged |" if changes else ""),
             "|---|---:|---:|" + ("---:|---:|" if changes else "")]
    for name, c in counts.items():
        row = f"| {name} | {c['trainable']:,} | {c['total']:,} |"
        if changes:
            key = name if name != "all" else None
            ch = changes.get(key, {}) if key else {"changed": sum(v["changed"] for v in changes.values()),
                                                   "unchanged": sum(v["unchanged"] for v in changes.values())}
            row += f" {ch.get('changed', 0)} | {ch.get('unchanged', 0)} |"
        lines.append(row)
    return "\n".join(lines)


def _freezing_ok(trainable: tuple[str, ...], changes: dict[str, dict[str, int]]) -> tuple[bool, list[str]]:
    """Frozen modules must be bitwise unchanged. (A trainable module may legitimately stay unchanged, e.g.
    the ViT when a step saw no image, so only frozen ones are checked.)"""
    if "all" in trainable:
        return True, []
    bad = []
    for module, ch in changes.items():
        trains = any(module == t or module.startswith(t + ".") for t in trainable)
        if not trains and ch["changed"]:
            bad.append(module)
    return not bad, bad


def train_stage(context: dg.AssetExecutionContext, stage: int, config: StageRunConfig, storage: StorageResource,
                trainer: TrainerResource) -> dg.MaterializeResult:
    """Run one stage (resumable) and report what a training engineer checks first."""
    from trainer.config import load_stage
    from trainer.model import weight_changes
    from trainer.train import TrainArgs, train

    root = _local_root(storage)
    overrides = {"seq_len": config.seq_len or trainer.seq_len, "lr": config.lr,
                 "micro_batch_size": config.micro_batch_size, "grad_accum_steps": config.grad_accum_steps,
                 "token_budget": config.token_budget, "warmup_steps": config.warmup_steps,
                 "max_pixels": trainer.max_pixels}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = load_stage(stage, trainer.stages_config).with_overrides(**overrides)
    max_steps = config.max_steps if config.max_steps is not None else trainer.max_steps
    specs, used, missing = stage_sources(str(root), cfg.weights)
    if not specs:
        raise dg.Failure(f"stage {stage} weights {sorted(cfg.weights)} but no shards of those kinds exist under "
                         f"{root / 'shards'}: materialize the shard assets first")
    start = trainer.model_path(str(root)) if stage == 1 else _final_of(root, stage - 1)
    run_id = fingerprint(cfg.to_json(), max_steps, specs, start, trainer.dtype)
    out = root / "checkpoints" / STAGES[stage] / run_id
    context.log.info(f"stage {stage} ({cfg.name}) from {start} on {specs} -> {out}"
                     + (f"; no shards yet for {missing}" if missing else ""))
    result = train(TrainArgs(stage=stage, shards=specs, model=start, out=str(out), max_steps=max_steps,
                             config=trainer.stages_config, overrides=overrides, resume=config.resume,
                             cpu=trainer.cpu, dtype=trainer.dtype))
    if result.final_dir is None:
        raise dg.Failure(f"stage {stage} stopped at step {result.steps}/{result.total_steps} without final weights")
    metrics = json.loads(Path(result.metrics_path).read_text())
    history = metrics["history"]
    changes = weight_changes(start, result.final_dir, trainer.dtype) if trainer.verify_freezing else None
    frozen_ok, moved = _freezing_ok(cfg.trainable, changes) if changes is not None else (True, [])
    curve = plot_curves(out / "loss_curve.png", {"loss": result.losses}, "loss (per target token)")
    (root / "checkpoints" / STAGES[stage] / "LATEST.json").write_text(json.dumps(
        {"run": run_id, "final": result.final_dir, "metrics": result.metrics_path}, indent=2))
    kinds: dict[str, int] = {}
    for h in history:
        for k, v in h["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    seconds = sum(h["seconds"] for h in history)
    losses_finite = all(math.isfinite(v) for v in result.losses)
    md = {
        "stage": dg.MetadataValue.text(f"{stage}: {cfg.name} ({cfg.description})"),
        "steps": dg.MetadataValue.int(result.steps),
        "tokens_seen": dg.MetadataValue.int(metrics["tokens"]),
        "target_tokens": dg.MetadataValue.int(metrics["target_tokens"]),
        "samples": dg.MetadataValue.int(metrics["samples"]),
        "loss_first": dg.MetadataValue.float(result.losses[0]),
        "loss_last": dg.MetadataValue.float(result.losses[-1]),
        "loss_curve": dg.MetadataValue.md(loss_table(result.losses)),
        "loss_curve_png": dg.MetadataValue.path(curve),
        "tokens_per_second": dg.MetadataValue.float(metrics["tokens"] / seconds if seconds else 0.0),
        "trainable_parameters": dg.MetadataValue.int(result.param_counts["all"]["trainable"]),
        "parameters": dg.MetadataValue.md(_params_table(result.param_counts, changes)),
        "trainable_modules": dg.MetadataValue.text(", ".join(cfg.trainable)),
        "lr": dg.MetadataValue.float(cfg.lr),
        "seq_len": dg.MetadataValue.int(cfg.seq_len),
        "samples_by_kind": dg.MetadataValue.json(kinds),
        "shards": dg.MetadataValue.json(used),
        "kinds_without_shards": dg.MetadataValue.text(", ".join(missing) or "none"),
        "data_counters": dg.MetadataValue.json(dict(result.counters)),
        "start_weights": dg.MetadataValue.path(start),
        "checkpoint": dg.MetadataValue.path(result.checkpoint or ""),
        "final_weights": dg.MetadataValue.path(result.final_dir),
        "metrics": dg.MetadataValue.path(result.metrics_path),
    }
    return dg.MaterializeResult(metadata=md, check_results=[
        dg.AssetCheckResult(check_name="loss_finite", passed=losses_finite,
                            metadata={"loss_last": dg.MetadataValue.float(result.losses[-1])}),
        dg.AssetCheckResult(check_name="frozen_modules_unchanged", passed=frozen_ok,
                            metadata={"verified": dg.MetadataValue.bool(changes is not None),
                                      "moved_frozen_modules": dg.MetadataValue.text(", ".join(moved) or "none")}),
    ])


def _stage_checks(name: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("loss_finite", asset=name, description="every step's loss is finite"),
            dg.AssetCheckSpec("frozen_modules_unchanged", asset=name,
                              description="modules the stage freezes are bitwise equal before and after")]


def _stage_asset(stage: int, deps: list[str], description: str) -> dg.AssetsDefinition:
    name = STAGES[stage]

    @dg.asset(name=name, group_name=GROUP, kinds={"pytorch"}, deps=deps, check_specs=_stage_checks(name),
              description=description, automation_condition=dg.AutomationCondition.eager())
    def _asset(context: dg.AssetExecutionContext, config: StageRunConfig, storage: StorageResource,
               trainer: TrainerResource) -> dg.MaterializeResult:
        return train_stage(context, stage, config, storage, trainer)

    return _asset


stage1_projector_warmup = _stage_asset(
    1, ["image_text_shards"], "Stage 1: projector warm-up on image-caption shards (only the merger trains).")
stage2_vision_language_alignment = _stage_asset(
    2, [STAGES[1], "interleaved_shards"], "Stage 2: ViT + projector on captions and interleaved documents.")
stage3_multimodal_pretraining = _stage_asset(
    3, [STAGES[2], "ocr_grounding_shards", "video_shards", "reasoning_sft_shards"],
    "Stage 3: all parameters on every data kind (captions, interleaved, OCR, grounding, video, reasoning).")
stage4_long_context_sft = _stage_asset(
    4, [STAGES[3]], "Stage 4: long-context SFT, all parameters (long documents, video and reasoning).")


def rl_rows(root: str, per_task: int) -> tuple[list[dict], dict[str, str]]:
    """MORL samples: verified math prompts from rl_prompt_pool, plus grounding and temporal-grounding
    samples from the chat-format shards (their answer is the gold the reward router checks)."""
    from curation import shards
    from trainer.morl import chat_rl_samples, math_samples

    rows: list[dict] = []
    used: dict[str, str] = {}
    pool = fsio.join(root, "manifests", "rl_prompt_pool", "all.parquet")
    if fsio.exists(pool):
        prompts = [r for r in fsio.read_records(pool) if r.get("pool") in ("rl", "easy")]
        rows += math_samples(sorted(prompts, key=lambda r: str(r.get("id")))[:per_task])
        used["math"] = pool
    for task, datasets in RL_DATASETS.items():
        for ds in datasets:
            url = latest_shards(root, ds)
            if not url:
                continue
            index = shards.read_index(url)
            samples = (s for tar in index.tar_urls for s in shards.iter_samples(tar))
            got = chat_rl_samples(samples, task, limit=per_task)
            if got:
                rows += got
                used[task] = url
    return rows, used


@dg.asset(group_name=GROUP, kinds={"pytorch"}, deps=[STAGES[4], "rl_prompt_pool", "ocr_grounding_shards", "video_shards"],
          automation_condition=dg.AutomationCondition.eager(),
          check_specs=[dg.AssetCheckSpec("rewards_in_unit_interval", asset="morl_policy",
                                         description="every logged reward is in [0, 1]")])
def morl_policy(context: dg.AssetExecutionContext, config: MORLRunConfig, storage: StorageResource,
                trainer: TrainerResource) -> dg.MaterializeResult:
    """MORL: fully on-policy GRPO from the stage-4 weights over math, grounding and temporal-grounding prompts."""
    from trainer.morl import MORLConfig, run_morl

    root = _local_root(storage)
    start = _final_of(root, 4)
    rows, used = rl_rows(str(root), trainer.morl_samples_per_task)
    if not rows:
        raise dg.Failure("no RL prompts: materialize rl_prompt_pool, ocr_grounding_shards or video_shards first")
    cfg = MORLConfig(max_steps=config.max_steps or trainer.morl_max_steps,
                     num_generations=config.num_generations or trainer.morl_num_generations,
                     prompts_per_step=trainer.morl_prompts_per_step,
                     max_completion_length=trainer.morl_max_completion_length, learning_rate=config.learning_rate,
                     easy_pool_prob=config.easy_pool_prob, dynamic_sampling=config.dynamic_sampling,
                     use_cpu=trainer.cpu, bf16=trainer.dtype == "bfloat16", seed=0)
    run_id = fingerprint(start, sorted(used.items()), len(rows), repr(cfg))
    out = root / "checkpoints" / "morl_policy" / run_id
    res = run_morl(start, rows, str(out), cfg)
    curve = plot_curves(out / "reward_curves.png", dict(res.per_task_rewards), "mean reward")
    (root / "checkpoints" / "morl_policy" / "LATEST.json").write_text(json.dumps(
        {"run": run_id, "final": res.final_dir, "metrics": res.metrics_path}, indent=2))
    logged = [v for vs in res.per_task_rewards.values() for v in vs if v is not None]
    lines = ["| step | " + " | ".join(res.tasks) + " | loss |", "|---:|" + "---:|" * (len(res.tasks) + 1)]
    for i in range(res.steps):
        cells = [res.per_task_rewards[t][i] if i < len(res.per_task_rewards[t]) else None for t in res.tasks]
        loss = res.losses[i] if i < len(res.losses) else None
        lines.append(f"| {i + 1} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells)
                     + f" | {'' if loss is None else f'{loss:.4f}'} |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    return dg.MaterializeResult(metadata={
        "steps": dg.MetadataValue.int(res.steps),
        "tasks": dg.MetadataValue.text(", ".join(res.tasks)),
        "prompts_by_task": dg.MetadataValue.json(counts),
        "reward_curves": dg.MetadataValue.md("\n".join(lines)),
        "reward_curves_png": dg.MetadataValue.path(curve),
        "dynamic_sampling": dg.MetadataValue.json(res.dynamic_sampling),
        "prompt_sources": dg.MetadataValue.json(used),
        "start_weights": dg.MetadataValue.path(start),
        "final_weights": dg.MetadataValue.path(res.final_dir),
        "metrics": dg.MetadataValue.path(res.metrics_path),
    }, check_results=[dg.AssetCheckResult(check_name="rewards_in_unit_interval",
                                          passed=all(0.0 <= v <= 1.0 for v in logged),
                                          metadata={"rewards_logged": dg.MetadataValue.int(len(logged))})])


ASSETS = [stage1_projector_warmup, stage2_vision_language_alignment, stage3_multimodal_pretraining,
          stage4_long_context_sft, morl_policy]
