"""MORL: fully on-policy GRPO on TRL's GRPOTrainer with the reward router (MiMo-VL section 4).

On-policy settings (TRL 1.16 GRPOConfig): ``beta=0.0`` (no KL, no reference model),
``num_iterations=1`` and ``steps_per_generation == gradient_accumulation_steps`` (every rollout
batch feeds exactly one optimizer update, so the old policy is the current one: the PPO ratio is 1
and clipping never acts), ``vllm_importance_sampling_correction=False`` (no off-policy correction;
with vLLM generation on GPU the sampler and the trainer hold the same weights), ``loss_type="dapo"``
(token-level policy-gradient loss normalized by the active tokens of the global batch, as DAPO and
MiMo use), ``scale_rewards="group"`` (advantage = (r - group mean) / group std).

Rewards: one TRL reward function per task (:meth:`RewardRouter.reward_func`), each returning its
reward on its own rows and None elsewhere, so TRL sums one reward per row and logs
``rewards/<task>/mean`` per task.

Dynamic sampling (DAPO / MiMo): :class:`MORLTrainer` drops the groups whose rewards are all equal
(zero advantage, no gradient) and generates for fresh prompts until the rollout batch is full again
(at most ``max_refill_rounds`` rounds; groups still missing are filled with dropped ones, whose
advantages are 0). The easy pool (prompts with pass rate > 90%, ``pool == "easy"``) is sampled with
probability ``easy_pool_prob`` per group, the RL pool otherwise (:class:`PoolSampler`).

Limitations (TRL 1.16): a rollout batch that mixes text-only and image prompts fails in TRL
(``_tokenize_prompts`` passes None for a prompt without images to the processor), so each
generation batch holds prompts of one modality (drawn in proportion to their counts); tasks mix
freely within it. Dynamic sampling refills on a single process only (groups spread over ranks would
need a cross-rank re-shard); with several processes it is refused at start.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

from curation import storage
from trainer.rewards import TASKS, RewardRouter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MORLConfig:
    """MORL settings; the GRPOConfig fields are derived in :func:`grpo_config`."""

    max_steps: int = 10
    num_generations: int = 4
    prompts_per_step: int = 2  # groups per optimizer step (per process)
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 256
    learning_rate: float = 1e-6
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    easy_pool_prob: float = 0.1
    dynamic_sampling: bool = True
    max_refill_rounds: int = 4
    task_weights: Mapping[str, float] = field(default_factory=dict)  # default 1.0 per task
    seed: int = 0
    use_cpu: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    bf16: bool = False
    logging_steps: int = 1
    save_steps: int | None = None

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 (GRPO normalizes within a group)")
        if self.prompts_per_step < 1 or self.max_steps < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("prompts_per_step, max_steps and gradient_accumulation_steps must be >= 1")
        if not 0.0 <= self.easy_pool_prob <= 1.0:
            raise ValueError(f"easy_pool_prob must be in [0, 1], got {self.easy_pool_prob}")
        if self.max_refill_rounds < 0:
            raise ValueError("max_refill_rounds must be >= 0")
        unknown = sorted(set(self.task_weights) - set(TASKS))
        if unknown:
            raise ValueError(f"task_weights: unknown task(s) {unknown}; known: {list(TASKS)}")


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(model_config: Any) -> list[int]:
    """Ids of the vision special tokens of a Qwen2.5-VL config (none for a text-only model)."""
    names = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")
    return [int(i) for i in (getattr(model_config, n, None) for n in names) if i is not None]


def grpo_config(cfg: MORLConfig, out: str, tasks: Sequence[str], suppress: Sequence[int] = ()) -> GRPOConfig:
    """The TRL config of a fully on-policy run (see the module docstring for why each value).

    ``suppress``: token ids the policy must never sample. A sampled vision token (a young or random
    policy does sample them) makes the next forward pass count an image that has no pixels, and
    Qwen2.5-VL's M-RoPE index fails on the mismatch; TRL suppresses only the image pad itself."""
    if not suppress:
        generation_kwargs = None
    elif cfg.use_vllm:
        generation_kwargs = {"bad_words": list(VISION_TOKENS)}
    else:
        generation_kwargs = {"suppress_tokens": list(suppress)}
    return GRPOConfig(
        generation_kwargs=generation_kwargs,
        output_dir=out,
        beta=0.0,
        num_iterations=1,
        steps_per_generation=cfg.gradient_accumulation_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        vllm_importance_sampling_correction=False,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=cfg.max_steps,
        reward_weights=[float(cfg.task_weights.get(t, 1.0)) for t in tasks],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.use_cpu,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        report_to=[],
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        remove_unused_columns=False,
        shuffle_dataset=False,  # PoolSampler shuffles (seeded)
        log_completions=False,
    )


# ---------------------------------------------------------------------------------------------------
# RL samples


def rl_sample(task: str, prompt: str | Sequence[Mapping[str, Any]], gold: Any = None, *, images: Sequence[Any] = (),
              pool: str = "rl", system: str | None = None, **extra: Any) -> dict[str, Any]:
    """One RL row: chat ``prompt``, ``task``, ``gold`` (a string: boxes / intervals as text), PIL
    ``images`` (TRL inserts them into the first user turn) and ``pool`` (rl | easy)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    if isinstance(prompt, str):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
    gold_s = "" if gold is None else (json.dumps(list(gold)) if isinstance(gold, (list, tuple)) else str(gold))
    return {"prompt": msgs, "task": task, "gold": gold_s, "images": list(images),
            "pool": "easy" if pool == "easy" else "rl", **extra}


def math_samples(rows: Sequence[Mapping[str, Any]], system: str | None = None) -> list[dict[str, Any]]:
    """RL rows from the rl_prompt_pool asset / curation.reasoning.load_prompts rows (question, gold,
    choices, images, pool). Images are read through fsspec and decoded with Pillow."""
    from curation.reasoning import format_user_prompt
    from trainer.data import load_image

    out = []
    for r in rows:
        if r.get("gold") in (None, ""):
            continue
        images = [load_image(storage.read_bytes(u)) for u in (r.get("images") or [])]
        out.append(rl_sample("math", format_user_prompt(r), r["gold"], images=images, pool=r.get("pool") or "rl",
                             system=system, id=str(r.get("id", ""))))
    return out


def chat_rl_samples(samples: Iterable[Any], task: str, limit: int | None = None) -> list[dict[str, Any]]:
    """RL rows from chat-format shard samples (``json`` with ``messages``; images in the sample's image
    fields, in name order): the prompt is every turn before the last assistant turn, the gold is that
    turn's text. This is how verifiable curated samples (grounding boxes, [mm:ss, mm:ss] intervals,
    counts) become MORL prompts whose answer the reward router checks."""
    from trainer.data import _image_fields, load_image

    out: list[dict[str, Any]] = []
    for s in samples:
        if limit is not None and len(out) >= limit:
            break
        try:
            obj = json.loads(s.fields["json"])
        except (KeyError, ValueError):
            continue
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
            continue
        gold = msgs[-1].get("content")
        if isinstance(gold, list):
            gold = "".join(p.get("text", "") for p in gold if isinstance(p, Mapping))
        if not isinstance(gold, str) or not gold.strip():
            continue
        images = [load_image(s.fields[n]) for n in _image_fields(s.fields)]
        prompt = [dict(m) for m in msgs[:-1]]
        # TRL inserts the images into the first user turn itself: keep only its text parts
        for m in prompt:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, Mapping)
                                       and p.get("type") == "text")
        out.append(rl_sample(task, prompt, gold.strip(), images=images, id=str(obj.get("id", s.key))))
    return out


# ---------------------------------------------------------------------------------------------------
# sampling: easy pool and modality-homogeneous batches


class PoolSampler(torch.utils.data.Sampler):
    """Indices for GRPO in TRL's RepeatSampler layout: each generation batch holds ``groups`` prompts,
    each repeated ``num_generations`` times in a row, the batch repeated ``repeat_count`` times.

    Each batch takes one modality (image / text-only; chosen in proportion to the prompt counts) and
    each group slot the easy pool with probability ``easy_prob`` (when it has prompts), else the RL pool;
    within a (modality, pool) bucket prompts come in seeded shuffled order, reshuffled on wrap-around.
    """

    def __init__(self, modality: Sequence[bool], pool: Sequence[str], groups: int, num_generations: int,
                 repeat_count: int = 1, easy_prob: float = 0.0, seed: int = 0, num_batches: int | None = None) -> None:
        self.groups, self.G, self.repeat, self.easy_prob = groups, num_generations, repeat_count, easy_prob
        self.rng = np.random.default_rng([seed, 7])
        self.buckets: dict[tuple[bool, str], list[int]] = {}
        for i, (m, p) in enumerate(zip(modality, pool)):
            self.buckets.setdefault((bool(m), "easy" if p == "easy" else "rl"), []).append(i)
        self.modalities = sorted({m for m, _ in self.buckets})
        sizes = np.array([sum(len(v) for (m, _), v in self.buckets.items() if m == mod) for mod in self.modalities])
        self.mod_probs = sizes / sizes.sum()
        self._queues: dict[tuple[bool, str], list[int]] = {}
        n_rl = sum(len(v) for (_, p), v in self.buckets.items() if p == "rl") or len(modality)
        self.num_batches = num_batches or max(1, math.ceil(n_rl / groups))

    def _take(self, key: tuple[bool, str]) -> int:
        q = self._queues.setdefault(key, [])
        if not q:
            q.extend(int(i) for i in self.rng.permutation(self.buckets[key]))
        return q.pop()

    def draw_groups(self, n: int, modality: bool | None = None) -> list[int]:
        """``n`` prompt indices of one modality (drawn when None) with the easy-pool mixture."""
        mod = modality if modality is not None else self.modalities[int(self.rng.choice(len(self.modalities),
                                                                                           p=self.mod_probs))]
        out = []
        for _ in range(n):
            has_easy, has_rl = (mod, "easy") in self.buckets, (mod, "rl") in self.buckets
            easy = has_easy and (not has_rl or self.rng.random() < self.easy_prob)
            out.append(self._take((mod, "easy" if easy else "rl")))
        return out

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.num_batches):
            chunk = self.draw_groups(self.groups)
            for _ in range(self.repeat):
                for i in chunk:
                    yield from [i] * self.G

    def __len__(self) -> int:
        return self.num_batches * self.groups * self.G * self.repeat


# ---------------------------------------------------------------------------------------------------
# dynamic sampling helpers (pure functions on TRL's rollout dicts)

_LEFT = {"prompt_ids", "prompt_mask"}
_RIGHT = {"completion_ids": None, "completion_mask": 0, "tool_mask": 1, "old_per_token_logps": 0.0,
          "sampling_per_token_logps": 0.0, "ref_per_token_logps": 0.0}
_SPLIT = {"mm_token_type_ids", "token_type_ids"}  # prompt part + completion part
_ROWS = {"advantages"}
_LISTS = {"pixel_values", "image_grid_thw", "num_images"}


def group_has_signal(rewards: torch.Tensor, num_generations: int) -> list[bool]:
    """Per group: do the (NaN-ignoring) rewards differ? ``rewards`` is one value per row."""
    out = []
    for g in rewards.view(-1, num_generations):
        g = g[~torch.isnan(g)]
        out.append(bool(g.numel() > 1 and (g.max() - g.min()) > 0))
    return out


def _pad(t: torch.Tensor, width: int, side: str, value: Any) -> torch.Tensor:
    n = width - t.shape[1]
    if n <= 0:
        return t
    pad = torch.full((t.shape[0], n, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if side == "left" else [t, pad], dim=1)


def select_rows(out: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """Rows of a rollout dict (pixel values split per row first; see :func:`merge_rollouts`)."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    res: dict[str, Any] = {}
    for k, v in out.items():
        if k == "num_items_in_batch" or v is None:
            res[k] = v
        elif isinstance(v, list):
            res[k] = [v[i] for i in rows]
        elif isinstance(v, torch.Tensor) and v.ndim >= 1:
            res[k] = v[idx.to(v.device)]
        else:
            res[k] = v
    return res


def merge_rollouts(parts: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Concatenate rollout dicts row-wise: prompts re-padded on the left, completions on the right,
    per-row image lists joined, ``num_items_in_batch`` recomputed. Unknown keys are refused."""
    if len(parts) == 1:
        return dict(parts[0])
    merged: dict[str, Any] = {}
    p_width = max(p["prompt_ids"].shape[1] for p in parts)
    c_width = max(p["completion_ids"].shape[1] for p in parts)
    for k in parts[0]:
        vals = [p.get(k) for p in parts]
        if k == "num_items_in_batch":
            continue
        if any(v is None for v in vals):
            if not all(v is None for v in vals):
                raise ValueError(f"rollouts disagree on {k!r}")
            merged[k] = None
        elif k in _LEFT:
            value = pad_token_id if k == "prompt_ids" else 0
            merged[k] = torch.cat([_pad(v, p_width, "left", value) for v in vals])
        elif k in _RIGHT:
            value = pad_token_id if k == "completion_ids" else _RIGHT[k]
            merged[k] = torch.cat([_pad(v, c_width, "right", value) for v in vals])
        elif k in _SPLIT:
            pieces = []
            for p, v in zip(parts, vals):
                pw = p["prompt_ids"].shape[1]
                pieces.append(torch.cat([_pad(v[:, :pw], p_width, "left", 0), _pad(v[:, pw:], c_width, "right", 0)], 1))
            merged[k] = torch.cat(pieces)
        elif k in _ROWS:
            merged[k] = torch.cat(vals)
        elif k in _LISTS:
            merged[k] = [x for v in vals for x in v]
        else:
            raise NotImplementedError(f"dynamic sampling cannot merge rollout field {k!r}")
    mask = merged["completion_mask"]
    if merged.get("tool_mask") is not None:
        mask = mask * merged["tool_mask"]
    merged["num_items_in_batch"] = mask.sum()
    return merged


class MORLTrainer(GRPOTrainer):
    """GRPOTrainer with the easy-pool sampler and dynamic sampling (drop flat groups, refill)."""

    def __init__(self, *args: Any, morl: MORLConfig, modality: Sequence[bool] | None = None, **kwargs: Any) -> None:
        """``modality``: per dataset row, does it have images (computed from the dataset when None,
        which decodes every image once: pass it for large pools)."""
        self.morl = morl
        self._last_rewards: torch.Tensor | None = None
        super().__init__(*args, **kwargs)
        if morl.dynamic_sampling and self.accelerator.num_processes > 1:
            raise NotImplementedError("dynamic sampling refills on one process only; set dynamic_sampling=False")
        ds = self.train_dataset
        if modality is not None:
            self._modality = [bool(m) for m in modality]
        elif "images" in ds.column_names:
            self._modality = [len(r or []) > 0 for r in ds["images"]]
        else:
            self._modality = [False] * len(ds)
        if len(self._modality) != len(ds):
            raise ValueError(f"modality has {len(self._modality)} entries for {len(ds)} rows")
        self._pool = list(ds["pool"]) if "pool" in ds.column_names else ["rl"] * len(ds)
        self._refill = PoolSampler(self._modality, self._pool, 1, self.num_generations, easy_prob=morl.easy_pool_prob,
                                   seed=morl.seed + 1)
        self.ds_stats = {"dropped_groups": 0, "refill_rounds": 0, "unfilled_groups": 0, "groups": 0}

    def _get_train_sampler(self, dataset: Any = None) -> PoolSampler:
        return PoolSampler(self._modality, self._pool, groups=self.args.generation_batch_size // self.num_generations,
                           num_generations=self.num_generations,
                           repeat_count=self.num_iterations * self.args.steps_per_generation,
                           easy_prob=self.morl.easy_pool_prob, seed=self.morl.seed)

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func
        return rewards_per_func

    def _aligned(self, out: dict[str, Any]) -> dict[str, Any]:
        """``mm_token_type_ids`` rebuilt from the token ids (1 on image pads, 2 on video pads). TRL 1.16
        returns them padded apart from ``prompt_ids`` when a rollout's prompts differ in length, and
        Qwen2.5-VL's M-RoPE index then counts an image block outside the attention mask."""
        if out.get("mm_token_type_ids") is None:
            return out
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mm = torch.zeros_like(ids, dtype=out["mm_token_type_ids"].dtype)
        if self._image_pad_token_id is not None:
            mm[ids == self._image_pad_token_id] = 1
        if self._video_pad_token_id is not None:
            mm[ids == self._video_pad_token_id] = 2
        if mm.shape != out["mm_token_type_ids"].shape:
            raise RuntimeError(f"mm_token_type_ids {tuple(out['mm_token_type_ids'].shape)} do not span prompt + "
                               f"completion {tuple(ids.shape)}: TRL's rollout layout changed")
        return {**out, "mm_token_type_ids": mm}

    def _row_rewards(self) -> torch.Tensor:
        assert self._last_rewards is not None
        r = self._last_rewards
        total = (r * self.reward_weights.to(r.device).unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(r).all(dim=1)] = torch.nan
        return total.cpu()

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = self._aligned(super()._generate_and_score_completions(inputs))
        if not self.model.training or not self.morl.dynamic_sampling:
            return out
        G = self.num_generations
        need = len(inputs) // G
        modality = bool(self._modality and inputs[0].get("images"))
        parts = [(split_pixel_values_by_grid(out), group_has_signal(self._row_rewards(), G))]
        have, rounds = sum(parts[0][1]), 0
        while have < need and rounds < self.morl.max_refill_rounds:
            rounds += 1
            idx = self._refill.draw_groups(need - have, modality)
            refill = [self.train_dataset[i] for i in idx for _ in range(G)]
            o = super()._generate_and_score_completions(refill)
            parts.append((split_pixel_values_by_grid(o), group_has_signal(self._row_rewards(), G)))
            have += sum(parts[-1][1])
        chosen: list[tuple[int, int]] = [(p, g) for p, (_, sig) in enumerate(parts) for g, s in enumerate(sig) if s]
        chosen = chosen[:need]
        unfilled = need - len(chosen)
        if unfilled:  # keep the batch shape with dropped groups (zero advantage: no gradient)
            flat = [(0, g) for g, s in enumerate(parts[0][1]) if not s]
            chosen += flat[:unfilled]
        pieces = []
        for p, (o, _) in enumerate(parts):
            rows = [g * G + j for (pp, g) in chosen if pp == p for j in range(G)]
            if rows:
                pieces.append(select_rows(o, rows))
        merged = self._aligned(unsplit_pixel_values_by_grid(merge_rollouts(pieces, self._tokenizer.pad_token_id)))
        dropped = sum(1 for _, sig in parts for s in sig if not s)
        self.ds_stats["dropped_groups"] += dropped
        self.ds_stats["refill_rounds"] += rounds
        self.ds_stats["unfilled_groups"] += unfilled
        self.ds_stats["groups"] += need
        mode = "train"
        self._metrics[mode]["dynamic_sampling/dropped_groups"].append(float(dropped))
        self._metrics[mode]["dynamic_sampling/refill_rounds"].append(float(rounds))
        self._metrics[mode]["dynamic_sampling/unfilled_groups"].append(float(unfilled))
        return merged


# ---------------------------------------------------------------------------------------------------
# entry point


@dataclass
class MORLResult:
    steps: int
    tasks: list[str]
    per_task_rewards: dict[str, list[float | None]]
    rewards: list[float | None]
    losses: list[float | None]
    dynamic_sampling: dict[str, int]
    final_dir: str
    metrics_path: str


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def load_policy(path: str) -> tuple[Any, Any]:
    """(model, processing class): Qwen2.5-VL with its processor, or a causal LM with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    from trainer.model import load_model

    if getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None:
        return load_model(path), AutoProcessor.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def run_morl(model_path: str, samples: Sequence[Mapping[str, Any]], out: str, cfg: MORLConfig | None = None,
             router: RewardRouter | None = None) -> MORLResult:
    """GRPO over ``samples`` (rows from :func:`rl_sample` / :func:`math_samples`); writes ``out/final``
    and ``out/metrics.json`` (per-step losses, rewards per task, dynamic-sampling counts)."""
    from datasets import Dataset

    cfg = cfg or MORLConfig()
    router = router or RewardRouter()
    if not samples:
        raise ValueError("no RL samples")
    rows = [dict(s) for s in samples]
    for r in rows:
        r.setdefault("images", [])
        r.setdefault("pool", "rl")
    tasks = sorted({r["task"] for r in rows})
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    model, processing = load_policy(model_path)
    trainer = MORLTrainer(model=model, processing_class=processing, reward_funcs=router.reward_funcs(tasks),
                          args=grpo_config(cfg, out, tasks, vision_token_ids(model.config)), train_dataset=Dataset.from_list(rows), morl=cfg,
                          modality=[bool(r["images"]) for r in rows])
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    per_task = {t: [_num(h.get(f"rewards/{t}/mean")) for h in steps] for t in tasks}
    final_dir = str(Path(out) / "final")
    trainer.save_model(final_dir)
    processing.save_pretrained(final_dir)
    result = MORLResult(steps=trainer.state.global_step, tasks=tasks, per_task_rewards=per_task,
                        rewards=[_num(h.get("reward")) for h in steps], losses=[_num(h.get("loss")) for h in steps],
                        dynamic_sampling=dict(trainer.ds_stats), final_dir=final_dir,
                        metrics_path=str(Path(out) / "metrics.json"))
    Path(result.metrics_path).write_text(json.dumps({**asdict(result), "config": _cfg_json(cfg),
                                                     "history": _clean(steps)}, indent=2, sort_keys=True))
    return result


def _cfg_json(cfg: MORLConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["task_weights"] = dict(cfg.task_weights)
    return d


def _clean(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (_num(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.morl --model PATH --prompts URL --out DIR``: math RL on the rl_prompt_pool."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m trainer.morl", description=main.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="rl_prompt_pool parquet (or jsonl) URL")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--easy-pool-prob", type=float, default=0.1)
    p.add_argument("--no-dynamic-sampling", action="store_true")
    p.add_argument("--system", default=None)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--use-vllm", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from curation.reasoning import load_prompts

    rows = storage.read_records(a.prompts) if a.prompts.endswith(".parquet") else load_prompts(a.prompts)
    samples = math_samples(rows, system=a.system)
    cfg = MORLConfig(max_steps=a.max_steps, num_generations=a.num_generations, prompts_per_step=a.prompts_per_step,
                     max_completion_length=a.max_completion_length, learning_rate=a.lr,
                     easy_pool_prob=a.easy_pool_prob, dynamic_sampling=not a.no_dynamic_sampling, use_cpu=a.cpu,
                     use_vllm=a.use_vllm)
    result = run_morl(a.model, samples, a.out, cfg)
    print(json.dumps({"steps": result.steps, "tasks": result.tasks, "per_task_rewards": result.per_task_rewards,
                      "final": result.final_dir}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
