"""Stage settings (trainer/configs/stages.yaml) as validated dataclasses.

``load_stages()`` reads the versioned YAML file, merges each stage over ``defaults`` and checks
every value; a problem raises :class:`ConfigError` naming the setting (``stages.2.lr: ...``).
``StageConfig.with_overrides`` applies command-line / run-config overrides through the same checks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "stages.yaml"
CONFIG_VERSION = 1

# Data kinds a mixture may weight. The shard format of a sample (caption / chat / text) is read from its
# fields, so a kind is a mixture bucket, not a decoder: see trainer.data.
KINDS: tuple[str, ...] = (
    "image_caption", "interleaved", "ocr", "grounding", "video", "gui", "reasoning", "text", "long_document",
)
# Parameter groups by module path in Qwen2_5_VLForConditionalGeneration (transformers 5.x).
MODULES: tuple[str, ...] = ("model.visual", "model.visual.merger", "model.language_model", "lm_head")
ALL = "all"
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")


class ConfigError(ValueError):
    """A stage setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class StageConfig:
    """One training stage: what trains, on which data mixture, with which optimizer and schedule."""

    stage: int
    name: str
    trainable: tuple[str, ...]
    lr: float
    seq_len: int
    token_budget: int
    mixture: Mapping[str, float]
    description: str = ""
    schedule: str = "cosine"
    min_lr: float | None = None
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    seed: int = 0
    micro_batch_size: int = 1
    grad_accum_steps: int = 1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    shuffle_buffer: int = 1000
    pad_to_multiple_of: int = 8
    caption_prompt: str = "Describe the image."
    save_every: int = 1000
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = False
    min_pixels: int | None = None
    max_pixels: int | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def end_lr(self) -> float:
        """Learning rate at the end of the decay (``min_lr``, or ``lr`` when unset)."""
        return self.lr if self.min_lr is None else self.min_lr

    @property
    def weights(self) -> dict[str, float]:
        """Mixture weights normalized to sum 1 (kinds with weight 0 left out)."""
        total = sum(self.mixture.values())
        return {k: w / total for k, w in self.mixture.items() if w > 0}

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Upper bound on tokens per optimizer step (rows are packed up to ``seq_len``)."""
        return self.seq_len * self.micro_batch_size * self.grad_accum_steps * world_size

    def total_steps(self, world_size: int = 1, max_steps: int | None = None) -> int:
        """Optimizer steps of the stage: ``max_steps`` when given, else the token budget's worth."""
        if max_steps is not None:
            if max_steps < 1:
                raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
            return max_steps
        return max(1, math.ceil(self.token_budget / self.tokens_per_step(world_size)))

    def resolved_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(self.warmup_ratio * total_steps)

    def with_overrides(self, **overrides: Any) -> StageConfig:
        """A copy with the given settings replaced (None values are ignored), validated again."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"stage {self.stage}: unknown setting(s) {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable"] = list(self.trainable)
        d["adam_betas"] = list(self.adam_betas)
        d["mixture"] = dict(self.mixture)
        return d


def _err(stage: Any, key: str, msg: str) -> ConfigError:
    return ConfigError(f"stages.{stage}.{key}: {msg}")


def _validate(c: StageConfig) -> None:  # noqa: C901 - one flat list of checks reads best
    s = c.stage

    def number(key: str, value: Any, *, integer: bool = False, low: float | None = None, strict: bool = False,
               high: float | None = None, optional: bool = False) -> None:
        if value is None:
            if optional:
                return
            raise _err(s, key, "is required")
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
            raise _err(s, key, f"must be {'an integer' if integer else 'a finite number'}, got {value!r}")
        if low is not None and (value <= low if strict else value < low):
            raise _err(s, key, f"must be {'>' if strict else '>='} {low}, got {value!r}")
        if high is not None and value > high:
            raise _err(s, key, f"must be <= {high}, got {value!r}")

    if c.version != CONFIG_VERSION:
        raise ConfigError(f"config version {c.version!r} is not supported (this code reads version {CONFIG_VERSION})")
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ConfigError(f"stage number must be a positive integer, got {s!r}")
    if not isinstance(c.name, str) or not c.name.isidentifier():
        raise _err(s, "name", f"must be a snake_case identifier, got {c.name!r}")
    if not c.trainable or isinstance(c.trainable, str):
        raise _err(s, "trainable", "must be a non-empty list of module paths")
    for m in c.trainable:
        if m != ALL and m not in MODULES:
            raise _err(s, "trainable", f"unknown module {m!r}; known: {[*MODULES, ALL]}")
    if ALL in c.trainable and len(c.trainable) > 1:
        raise _err(s, "trainable", f"'{ALL}' cannot be combined with other modules")
    number("lr", c.lr, low=0, strict=True)
    number("min_lr", c.min_lr, low=0, optional=True)
    if c.min_lr is not None and c.min_lr > c.lr:
        raise _err(s, "min_lr", f"must be <= lr ({c.lr}), got {c.min_lr}")
    if c.schedule not in SCHEDULES:
        raise _err(s, "schedule", f"must be one of {list(SCHEDULES)}, got {c.schedule!r}")
    if c.schedule == "constant" and c.min_lr is not None and c.min_lr != c.lr:
        raise _err(s, "min_lr", "has no effect with schedule 'constant': remove it or pick cosine/linear")
    number("seq_len", c.seq_len, integer=True, low=16)
    number("token_budget", c.token_budget, integer=True, low=1)
    number("warmup_ratio", c.warmup_ratio, low=0, high=1)
    number("warmup_steps", c.warmup_steps, integer=True, low=0, optional=True)
    number("seed", c.seed, integer=True, low=0)
    number("micro_batch_size", c.micro_batch_size, integer=True, low=1)
    number("grad_accum_steps", c.grad_accum_steps, integer=True, low=1)
    number("weight_decay", c.weight_decay, low=0)
    number("adam_eps", c.adam_eps, low=0, strict=True)
    number("max_grad_norm", c.max_grad_norm, low=0, strict=True, optional=True)
    number("shuffle_buffer", c.shuffle_buffer, integer=True, low=1)
    number("pad_to_multiple_of", c.pad_to_multiple_of, integer=True, low=1)
    number("save_every", c.save_every, integer=True, low=1)
    number("keep_checkpoints", c.keep_checkpoints, integer=True, low=1)
    number("min_pixels", c.min_pixels, integer=True, low=1, optional=True)
    number("max_pixels", c.max_pixels, integer=True, low=1, optional=True)
    if c.min_pixels is not None and c.max_pixels is not None and c.min_pixels > c.max_pixels:
        raise _err(s, "min_pixels", f"must be <= max_pixels ({c.max_pixels}), got {c.min_pixels}")
    if len(c.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in c.adam_betas):
        raise _err(s, "adam_betas", f"must be two numbers in [0, 1), got {list(c.adam_betas)!r}")
    if not isinstance(c.gradient_checkpointing, bool):
        raise _err(s, "gradient_checkpointing", f"must be true or false, got {c.gradient_checkpointing!r}")
    if not isinstance(c.caption_prompt, str):
        raise _err(s, "caption_prompt", "must be a string")
    if not isinstance(c.mixture, Mapping) or not c.mixture:
        raise _err(s, "mixture", "must map data kinds to weights")
    for kind, w in c.mixture.items():
        if kind not in KINDS:
            raise _err(s, f"mixture.{kind}", f"unknown data kind; known: {list(KINDS)}")
        number(f"mixture.{kind}", w, low=0)
    if sum(c.mixture.values()) <= 0:
        raise _err(s, "mixture", "weights must not all be 0")


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def stage_from_mapping(stage: int, values: Mapping[str, Any], version: int = CONFIG_VERSION) -> StageConfig:
    """A :class:`StageConfig` from merged YAML values (unknown keys are an error)."""
    known = {f.name for f in dataclasses.fields(StageConfig)} - {"stage", "version"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _err(stage, unknown[0], f"unknown setting; known: {sorted(known)}")
    kwargs = {k: _as_tuple(v) for k, v in values.items()}
    missing = [k for k in ("name", "trainable", "lr", "seq_len", "token_budget", "mixture") if k not in kwargs]
    if missing:
        raise _err(stage, missing[0], "is required")
    if isinstance(kwargs.get("mixture"), Mapping):
        kwargs["mixture"] = dict(kwargs["mixture"])
    return StageConfig(stage=stage, version=version, **kwargs)


def load_stages(path: str | Path | None = None) -> dict[int, StageConfig]:
    """All stages of a stages.yaml (default: the one shipped in trainer/configs), keyed by number."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{p}: expected a mapping with 'version', 'defaults' and 'stages'")
    version = doc.get("version")
    if version != CONFIG_VERSION:
        raise ConfigError(f"{p}: version {version!r} is not supported (this code reads version {CONFIG_VERSION})")
    defaults = doc.get("defaults") or {}
    stages = doc.get("stages")
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{p}: 'defaults' must be a mapping")
    if not isinstance(stages, Mapping) or not stages:
        raise ConfigError(f"{p}: 'stages' must map stage numbers to settings")
    out: dict[int, StageConfig] = {}
    for key, values in stages.items():
        try:
            n = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"{p}: stage key {key!r} is not a number") from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"{p}: stages.{n} must be a mapping")
        try:
            out[n] = stage_from_mapping(n, {**defaults, **values}, version)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    numbers = sorted(out)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ConfigError(f"{p}: stages must be numbered 1..n without gaps, got {numbers}")
    names = [c.name for c in out.values()]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: stage names must be unique, got {names}")
    return out


def load_stage(stage: int, path: str | Path | None = None) -> StageConfig:
    stages = load_stages(path)
    if stage not in stages:
        raise ConfigError(f"stage {stage} is not defined; defined: {sorted(stages)}")
    return stages[stage]

