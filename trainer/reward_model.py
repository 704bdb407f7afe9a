"""Bradley-Terry reward model: a causal LM's backbone plus a linear head on its last token.

Trained on preference pairs (prompt, chosen, rejected) with the Bradley-Terry loss
-log sigmoid(r(chosen) - r(rejected)); served in process as the ``preference_model`` of
:class:`trainer.rewards.RewardRouter` (call it with prompts and responses, get scores).
The text of a pair is the tokenizer's chat template over [user prompt, assistant response], so the
model scores exactly what the policy's chat produces. Saved as the backbone in Hugging Face format
plus ``bt_head.safetensors`` and ``bt_config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD_FILE = "bt_head.safetensors"
CONFIG_FILE = "bt_config.json"


@dataclass(frozen=True)
class PreferencePair:
    prompt: Any  # a string or a list of chat messages
    chosen: str
    rejected: str


def _messages(prompt: Any, response: str) -> list[dict[str, Any]]:
    if isinstance(prompt, str) or prompt is None:
        msgs: list[dict[str, Any]] = [{"role": "user", "content": prompt or ""}]
    else:
        msgs = [dict(m) for m in prompt]
    return msgs + [{"role": "assistant", "content": response}]


class BTRewardModel(nn.Module):
    """Backbone (the causal LM without its LM head) -> hidden state of the last token -> scalar."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, max_length: int = 1024) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, path: str | Path, seed: int = 0, max_length: int = 1024) -> BTRewardModel:
        """A fresh head (seeded) on the backbone of the causal LM at ``path``."""
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        backbone = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        model = cls(backbone, tok, max_length)
        with torch.no_grad():
            model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen) * 0.02)
        return model

    def texts(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template(_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
        return [f"User: {p}\nAssistant: {r}" for p, r in zip(prompts, responses)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        return self.head(hidden[torch.arange(hidden.shape[0]), last]).squeeze(-1)

    def encode(self, prompts: Sequence[Any], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(self.texts(prompts, responses), return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_length, padding_side="right", add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self(**self.encode(prompts, responses)).tolist()
        self.train(was)
        return out

    def as_preference_model(self) -> Any:
        """The ``(prompts, responses) -> scores`` callable RewardRouter wants."""
        return self.score

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))
        (out / CONFIG_FILE).write_text(json.dumps({"max_length": self.max_length, "kind": "bradley_terry"}))
        return out

    @classmethod
    def load(cls, path: str | Path) -> BTRewardModel:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        p = Path(path)
        meta = json.loads((p / CONFIG_FILE).read_text())
        model = cls(AutoModel.from_pretrained(str(p), dtype=torch.float32), AutoTokenizer.from_pretrained(str(p)),
                    int(meta["max_length"]))
        model.head.load_state_dict(load_file(str(p / HEAD_FILE)))
        return model


def bt_loss(model: BTRewardModel, pairs: Sequence[PreferencePair]) -> torch.Tensor:
    """Mean of -log sigmoid(r(chosen) - r(rejected)) over ``pairs`` (one forward for both sides)."""
    prompts = [p.prompt for p in pairs]
    enc = model.encode(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    r = model(**enc)
    n = len(pairs)
    return -nn.functional.logsigmoid(r[:n] - r[n:]).mean()


def train_bradley_terry(model: BTRewardModel, pairs: Sequence[PreferencePair], *, steps: int = 50, lr: float = 1e-3,
                        batch_size: int = 8, seed: int = 0, train_backbone: bool = True) -> list[float]:
    """Train on ``pairs`` with AdamW; batches drawn by a seeded permutation. Returns the losses."""
    if not pairs:
        raise ValueError("no preference pairs")
    model.backbone.requires_grad_(train_backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, len(pairs)):
            order += torch.randperm(len(pairs), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        loss = bt_loss(model, [pairs[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def pairs_from_records(rows: Sequence[Mapping[str, Any]]) -> list[PreferencePair]:
    """Rows with prompt / chosen / rejected (the TRL preference-dataset column names)."""
    return [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
