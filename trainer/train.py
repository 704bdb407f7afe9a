"""One pre-training stage: packed batches -> Qwen2.5-VL, frozen per stage, exact checkpoints.

Runs single-process on CPU (tests, demo) and unchanged under ``accelerate launch`` (DDP, FSDP,
DeepSpeed; configs in trainer/configs/). Every rank reads its own shards (split by node), so the
data needs no DataLoader sharding from accelerate.

Loss: token-level cross-entropy on target tokens only, normalized by the target tokens of the whole
optimizer step (all micro-batches, all ranks), so gradient accumulation and data parallelism give
the same update as one big batch.

Checkpoints (``<out>/checkpoints/step-NNNNNNNN``) are ``accelerator.save_state`` folders: model,
optimizer, RNG states (per rank), the scheduler and the train state (step, tokens, loss history) as
registered objects, plus ``data_state_rank<R>.json``, each rank's data position. A run resumes from the newest one by default; the next step's loss
is bit-identical to an uninterrupted run's (tested). The final weights go to ``<out>/final`` in the
Hugging Face format (with the processor), which the next stage loads as its ``--model``;
``<out>/metrics.json`` holds the config, trainable-parameter counts, per-step metrics and data counters.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import data as tdata
from trainer.config import StageConfig, load_stage
from trainer.model import load_model, load_processor, param_counts, set_trainable, trainable_parameters

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"step-(\d{8})")
DATA_STATE = "data_state_rank{rank}.json"


@dataclass
class TrainArgs:
    """What a run needs besides the stage config (the CLI flags)."""

    stage: int
    shards: Sequence[str]
    model: str
    out: str
    max_steps: int | None = None
    config: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    resume: str = "auto"  # auto (newest checkpoint in out, if any) | none | a checkpoint folder
    stop_at: int | None = None  # end this invocation after this global step (checkpoint saved); resume later
    num_workers: int = 0
    cpu: bool = False
    dtype: str = "float32"
    attn_implementation: str | None = None
    log_every: int = 1


@dataclass
class TrainState:
    """Counters and per-step metrics; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    target_tokens: int = 0
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "target_tokens": self.target_tokens,
                "samples": self.samples, "history": list(self.history)}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.step, self.tokens = int(d["step"]), int(d["tokens"])
        self.target_tokens, self.samples = int(d["target_tokens"]), int(d["samples"])
        self.history = list(d["history"])


@dataclass
class TrainResult:
    stage: int
    steps: int
    total_steps: int
    losses: list[float]
    tokens: int
    param_counts: dict[str, dict[str, int]]
    out: str
    final_dir: str | None
    checkpoint: str | None
    counters: dict[str, int]
    metrics_path: str


def lr_lambda(cfg: StageConfig, total_steps: int) -> Any:
    """Multiplier of ``cfg.lr`` at optimizer step k (0-based): linear warm-up to 1 over the warm-up
    steps (k+1)/w, so the first step already learns, then constant / cosine / linear decay to
    ``end_lr / lr`` at the last step."""
    warmup = cfg.resolved_warmup_steps(total_steps)
    end = cfg.end_lr / cfg.lr
    return functools.partial(_lr_factor, warmup=warmup, total=total_steps, end=end, schedule=cfg.schedule)


def _lr_factor(step: int, *, warmup: int, total: int, end: float, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - end) * progress  # linear


def model_inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The forward kwargs of a packed batch (no attention mask: boundaries come from position_ids)."""
    out = {k: batch[k].to(device) for k in ("input_ids", "labels", "position_ids")}
    if batch.get("pixel_values") is not None:
        out["pixel_values"] = batch["pixel_values"].to(device)
        out["image_grid_thw"] = batch["image_grid_thw"].to(device)
    return out


def forward_loss(model: Any, batch: Mapping[str, Any], num_items: int | torch.Tensor, device: torch.device,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum of target-token cross-entropy over ``batch`` divided by ``num_items``."""
    inputs = model_inputs(batch, device)
    if dtype is not None and "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    out = model(**inputs, use_cache=False, num_items_in_batch=num_items)
    return out.loss


def find_checkpoints(out: str | Path) -> list[Path]:
    d = Path(out) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and CKPT_RE.fullmatch(p.name))


def _make_batches(worker: int, num_workers: int, state: Mapping[str, Any] | None, *, urls: Mapping[str, Sequence[str]],
                  cfg: StageConfig, encoder: tdata.Encoder, rank: int, world_size: int) -> tdata.PackedBatches:
    return tdata.PackedBatches(
        urls, cfg.weights, encoder, seq_len=cfg.seq_len, micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer, pad_to_multiple_of=cfg.pad_to_multiple_of, rank=rank,
        world_size=world_size, worker=worker, num_workers=num_workers, state=state)


def train(args: TrainArgs) -> TrainResult:  # noqa: C901 - the loop reads best in one place
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = load_stage(args.stage, args.config).with_overrides(**dict(args.overrides))
    accelerator = Accelerator(cpu=args.cpu)
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(cfg.seed)
    out = Path(args.out)
    total = cfg.total_steps(world, args.max_steps)

    processor = load_processor(args.model)
    model = load_model(args.model, args.dtype, args.attn_implementation)
    set_trainable(model, cfg.trainable)
    counts = {k: v.to_json() for k, v in param_counts(model).items()}
    if counts["all"]["trainable"] == 0:
        raise ValueError(f"stage {cfg.stage} trains no parameter (trainable: {list(cfg.trainable)})")
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    # The scheduler is stepped once per optimizer step on every rank, so it is not passed through
    # accelerator.prepare (which would step it once per process); it is checkpointed as an object.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    deepspeed = _is_deepspeed(accelerator)
    if deepspeed:
        # No DataLoader goes through prepare (each rank reads its own shards), so DeepSpeed cannot
        # infer its micro batch; gradient accumulation and clipping are set from the stage too.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum_steps
        if cfg.max_grad_norm is not None:
            ds["gradient_clipping"] = cfg.max_grad_norm
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP2 replaces parameters with sharded ones: take the trainable list again after prepare.
    params = [p for p in model.parameters() if p.requires_grad]
    state, data_state = TrainState(), tdata.DataState()
    # The data position differs per rank (each reads its own shards) while accelerate saves registered
    # objects from the main process only, so it goes to one file per rank (_save_checkpoint).
    accelerator.register_for_checkpointing(scheduler, state)

    ckpt: Path | None = None
    if args.resume == "auto":
        found = find_checkpoints(out)
        ckpt = found[-1] if found else None
    elif args.resume not in ("none", ""):
        ckpt = Path(args.resume)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        data_file = ckpt / DATA_STATE.format(rank=rank)
        if not data_file.exists():
            raise ValueError(f"{ckpt} has no {data_file.name}: it was written by fewer ranks; resume with the "
                             "same number of processes")
        data_state.load_state_dict(json.loads(data_file.read_text()))
        log.info("resumed from %s at step %d", ckpt, state.step)

    urls = tdata.group_by_kind(tdata.resolve_sources(args.shards), cfg.weights)
    encoder = tdata.Encoder(processor, caption_prompt=cfg.caption_prompt, min_pixels=cfg.min_pixels,
                            max_pixels=cfg.max_pixels)
    make = functools.partial(_make_batches, urls=urls, cfg=cfg, encoder=encoder, rank=rank, world_size=world)
    batches = tdata.batch_iterator(make, data_state, args.num_workers)

    device = accelerator.device
    pixel_dtype = next(iter(accelerator.unwrap_model(model).parameters())).dtype
    model.train()
    stop = total if args.stop_at is None else min(total, args.stop_at)
    last_ckpt: str | None = str(ckpt) if ckpt else None
    while state.step < stop:
        t0 = time.perf_counter()
        mbs = [next(batches) for _ in range(cfg.grad_accum_steps)]
        n_local = sum(mb["num_target_tokens"] for mb in mbs)
        n_global = int(accelerator.gather(torch.tensor([n_local], device=device)).sum())
        loss_sum = torch.zeros((), device=device)
        for i, mb in enumerate(mbs):
            sync = i == len(mbs) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss = forward_loss(model, mb, n_global, device, pixel_dtype)
                if not loss.requires_grad:
                    # No trainable module on this micro-batch's path (stage 2 trains only the ViT and a
                    # text-only document has no image): a zero tied to the trainable parameters keeps
                    # backward and the gradient all-reduce uniform; the update is zero.
                    loss = loss + sum(p.sum() for p in params) * 0.0
                # DDP averages gradients over ranks: scale so the update is the global token mean.
                # DeepSpeed also divides by the accumulation steps itself: undo that.
                accelerator.backward(loss * world * (cfg.grad_accum_steps if deepspeed else 1))
            loss_sum += loss.detach()
        grad_norm = None
        if cfg.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            grad_norm = None if norm is None else float(norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = float(accelerator.reduce(loss_sum, reduction="sum"))
        local = torch.tensor([[sum(mb["num_tokens"] for mb in mbs), sum(mb["num_samples"] for mb in mbs)]], device=device)
        tokens, samples = (int(v) for v in accelerator.gather(local).sum(dim=0))  # all ranks
        kinds: dict[str, int] = {}
        for mb in mbs:
            for k, v in mb["kinds"].items():
                kinds[k] = kinds.get(k, 0) + v
        state.step += 1
        state.tokens += tokens
        state.target_tokens += n_global
        state.samples += samples
        state.history.append({"step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                              "tokens": tokens, "target_tokens": n_global, "samples": samples, "kinds": kinds,
                              "seconds": round(time.perf_counter() - t0, 4)})
        if state.step % args.log_every == 0 and accelerator.is_main_process:
            log.info("stage %d step %d/%d loss %.4f lr %.3g tokens %d", cfg.stage, state.step, total, step_loss, lr,
                     state.tokens)
        if state.step % cfg.save_every == 0 or state.step == stop:
            last_ckpt = _save_checkpoint(accelerator, out, state.step, cfg.keep_checkpoints, data_state)

    counters = data_state.counters()
    final_dir = None
    if state.step >= total:
        final_dir = str(out / "final")
        _save_final(accelerator, model, processor, final_dir)
    metrics_path = out / "metrics.json"
    result = TrainResult(
        stage=cfg.stage, steps=state.step, total_steps=total, losses=[h["loss"] for h in state.history],
        tokens=state.tokens, param_counts=counts, out=str(out), final_dir=final_dir, checkpoint=last_ckpt,
        counters=dict(counters), metrics_path=str(metrics_path))
    if accelerator.is_main_process:
        _write_json(metrics_path, {
            "stage": cfg.stage, "name": cfg.name, "config": cfg.to_json(), "model": args.model,
            "shards": {k: list(v) for k, v in urls.items()}, "total_steps": total, "steps": state.step,
            "tokens": state.tokens, "target_tokens": state.target_tokens, "samples": state.samples,
            "param_counts": counts, "history": state.history, "counters": dict(counters),
            "final_dir": final_dir, "checkpoint": last_ckpt, "world_size": world})
    accelerator.wait_for_everyone()
    return result


def _is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def _save_checkpoint(accelerator: Any, out: Path, step: int, keep: int, data_state: tdata.DataState) -> str:
    """save_state into a temporary folder, plus each rank's data position, renamed into place (a crash
    never leaves a half checkpoint that auto-resume would pick), then drop all but the newest ``keep``.
    The output folder must be shared by all nodes (as accelerate's sharded states need too)."""
    final = out / "checkpoints" / f"step-{step:08d}"
    tmp = out / "checkpoints" / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    _write_json(tmp / DATA_STATE.format(rank=accelerator.process_index), data_state.state_dict())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in find_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return str(final)


def _save_final(accelerator: Any, model: Any, processor: Any, final_dir: str) -> None:
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = Path(final_dir).with_name(f".tmp-{Path(final_dir).name}")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.config.use_cache = True
        unwrapped.save_pretrained(str(tmp), state_dict=state_dict)
        processor.save_pretrained(str(tmp))
        shutil.rmtree(final_dir, ignore_errors=True)
        tmp.rename(final_dir)
    accelerator.wait_for_everyone()
