"""Stage config: the shipped MiMo-VL values, validation errors that name the setting, schedules."""

from __future__ import annotations

import math

import pytest
import yaml

from trainer.config import DEFAULT_CONFIG, ConfigError, load_stage, load_stages
from trainer.train import _lr_factor, lr_lambda


@pytest.mark.parametrize(
    ("stage", "name", "trainable", "lr", "end_lr", "seq_len", "tokens", "schedule"),
    [
        (1, "projector_warmup", ("model.visual.merger",), 1e-3, 1e-3, 8192, 300 * 10**9, "constant"),
        (2, "vision_language_alignment", ("model.visual",), 1e-4, 1e-5, 8192, 167 * 10**9, "cosine"),
        (3, "multimodal_pretraining", ("all",), 1e-5, 1e-5, 8192, 1400 * 10**9, "constant"),
        (4, "long_context_sft", ("all",), 2.5e-5, 2.5e-6, 32768, 550 * 10**9, "cosine"),
    ],
)
def test_shipped_stages_follow_mimo_vl_table_1(stage, name, trainable, lr, end_lr, seq_len, tokens, schedule):
    c = load_stage(stage)
    assert (c.name, c.trainable, c.lr, c.end_lr, c.seq_len, c.token_budget, c.schedule) == (
        name, trainable, lr, end_lr, seq_len, tokens, schedule)
    assert math.isclose(sum(c.weights.values()), 1.0)


def test_shipped_mixtures_grow_stage_by_stage():
    s = load_stages()
    assert sum(c.token_budget for c in s.values()) == 2_417 * 10**9  # the report's 2.4T
    assert set(s[1].weights) == {"image_caption"}
    assert set(s[2].weights) == {"image_caption", "interleaved"}
    assert {"ocr", "grounding", "video", "gui", "reasoning", "text"} <= set(s[3].weights)
    assert max(s[4].weights, key=s[4].weights.get) == "reasoning"


def _write(tmp_path, mutate) -> str:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    mutate(doc)
    p = tmp_path / "stages.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["stages"][2].update(lr=-1.0), "stages.2.lr: must be > 0, got -1.0"),
        (lambda d: d["stages"][2].update(min_lr=1.0), "stages.2.min_lr: must be <= lr (0.0001), got 1.0"),
        (lambda d: d["stages"][1].update(trainable=["model.vision"]), "stages.1.trainable: unknown module 'model.vision'"),
        (lambda d: d["stages"][3].update(trainable=["all", "lm_head"]), "stages.3.trainable: 'all' cannot be combined"),
        (lambda d: d["stages"][3]["mixture"].update(audio=1.0), "stages.3.mixture.audio: unknown data kind"),
        (lambda d: d["stages"][1].update(mixture={"image_caption": 0}), "stages.1.mixture: weights must not all be 0"),
        (lambda d: d["stages"][4].update(seq_len="32k"), "stages.4.seq_len: must be an integer, got '32k'"),
        (lambda d: d["stages"][4].update(schedule="step"), "stages.4.schedule: must be one of"),
        (lambda d: d["stages"][1].update(min_lr=1e-4), "stages.1.min_lr: has no effect with schedule 'constant'"),
        (lambda d: d["stages"][2].update(warmup_ratio=2), "stages.2.warmup_ratio: must be <= 1, got 2"),
        (lambda d: d["stages"][2].update(learning_rate=1e-4), "stages.2.learning_rate: unknown setting"),
        (lambda d: d["stages"][2].pop("token_budget"), "stages.2.token_budget: is required"),
        (lambda d: d["defaults"].update(adam_betas=[0.9]), "stages.1.adam_betas: must be two numbers"),
        (lambda d: d["stages"].pop(2), "stages must be numbered 1..n without gaps, got [1, 3, 4]"),
        (lambda d: d["stages"][2].update(name="projector_warmup"), "stage names must be unique"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
    ],
)
def test_invalid_settings_raise_naming_the_setting(tmp_path, mutate, message):
    with pytest.raises(ConfigError) as e:
        load_stages(_write(tmp_path, mutate))
    assert message in str(e.value)


def test_unknown_stage_and_overrides():
    with pytest.raises(ConfigError, match=r"stage 5 is not defined; defined: \[1, 2, 3, 4\]"):
        load_stage(5)
    c = load_stage(4).with_overrides(seq_len=512, lr=None)
    assert (c.seq_len, c.lr) == (512, 2.5e-5)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_stage(1).with_overrides(batch=3)
    with pytest.raises(ConfigError, match="stages.1.micro_batch_size: must be >= 1, got 0"):
        load_stage(1).with_overrides(micro_batch_size=0)


def test_total_steps_from_token_budget():
    c = load_stage(1).with_overrides(seq_len=1000, micro_batch_size=2, grad_accum_steps=5, token_budget=95_000)
    assert c.tokens_per_step(world_size=2) == 20_000
    assert c.total_steps(world_size=2) == 5  # ceil(95k / 20k)
    assert c.total_steps(world_size=2, max_steps=3) == 3


def test_lr_schedules():
    cos = load_stage(2).with_overrides(warmup_steps=2)  # 1e-4 -> 1e-5
    f = lr_lambda(cos, total_steps=6)
    got = [round(f(k) * cos.lr, 12) for k in range(6)]
    assert got[:3] == [0.5e-4, 1e-4, 1e-4]  # warm-up (k+1)/w, then the peak
    assert got[5] == 1e-5  # the last step reaches min_lr
    assert got[2] > got[3] > got[4] > got[5]
    assert got[3] == round(1e-5 + 0.9e-4 * 0.5 * (1 + math.cos(math.pi / 3)), 12)
    const = lr_lambda(load_stage(3), total_steps=100)
    assert {const(k) for k in range(100)} == {1.0}
    assert [_lr_factor(k, warmup=0, total=3, end=0.0, schedule="linear") for k in range(3)] == [1.0, 0.5, 0.0]
