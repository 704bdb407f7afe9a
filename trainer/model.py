"""Qwen2.5-VL from a checkpoint path, frozen per stage by module, with trainable-parameter counts.

Any Qwen2.5-VL-architecture checkpoint loads: the tiny local one (curation.models.build_tiny_qwen2_5_vl)
or MiMo-VL-7B-SFT / -RL (same architecture). Module paths (transformers 5.x): ``model.visual``
(ViT, with the merger inside), ``model.visual.merger`` (the projector), ``model.language_model``,
``lm_head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import ALL, MODULES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str, dtype: str = "float32", attn_implementation: str | None = None) -> Any:
    """``Qwen2_5_VLForConditionalGeneration.from_pretrained(path)`` in ``dtype`` (float32 on CPU)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs)


def load_processor(path: str) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def set_trainable(model: torch.nn.Module, modules: Sequence[str]) -> None:
    """Freeze everything, then unfreeze the named modules (``all``: every parameter).

    A missing module is an error rather than a silent no-op: a stage that trains nothing, or a
    checkpoint with another layout, must not look like it trained.
    """
    if ALL in modules:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for name in modules:
        try:
            sub = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"module {name!r} not found in {type(model).__name__}; known: {list(MODULES)}") from e
        sub.requires_grad_(True)


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    def to_json(self) -> dict[str, int]:
        return {"trainable": self.trainable, "total": self.total}


def param_counts(model: torch.nn.Module) -> dict[str, ParamCount]:
    """Trainable / total parameters per canonical module and for the whole model (``all``).

    ``model.visual`` includes its merger; shared (tied) tensors count once.
    """
    out: dict[str, ParamCount] = {}
    for name in (*MODULES, ALL):
        sub = model if name == ALL else model.get_submodule(name)
        seen: set[int] = set()
        trainable = total = 0
        for p in sub.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        out[name] = ParamCount(trainable, total)
    return out


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def module_of(name: str) -> str:
    """The canonical module (``MODULES``, most specific first) a parameter name belongs to, or ``other``."""
    for m in sorted(MODULES, key=len, reverse=True):
        if name == m or name.startswith(m + "."):
            return m
    return "other"


def weight_changes(before: str, after: str, dtype: str = "float32") -> dict[str, dict[str, int]]:
    """Per canonical module: how many parameter tensors changed bitwise between two checkpoints and how
    many are unchanged. The proof of a stage's freezing: its frozen modules must have ``changed == 0``.

    ``model.visual`` counts the ViT without the merger (reported on its own). Loads both models, so on a
    7B checkpoint this costs two loads: the training assets make it optional.
    """
    a = dict(load_model(before, dtype).named_parameters())
    b = dict(load_model(after, dtype).named_parameters())
    if sorted(a) != sorted(b):
        raise ValueError(f"{before} and {after} have different parameter names")
    out: dict[str, dict[str, int]] = {}
    for name, p in a.items():
        m = out.setdefault(module_of(name), {"changed": 0, "unchanged": 0})
        m["changed" if not torch.equal(p, b[name]) else "unchanged"] += 1
    return dict(sorted(out.items()))
