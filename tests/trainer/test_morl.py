"""MORL: on-policy GRPO settings, the easy-pool sampler, dynamic sampling helpers, and a few steps end
to end on the tiny Qwen2.5-VL with real prompts (GSM8K math, COCO counting with images, preference)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.morl import (
    MORLConfig,
    PoolSampler,
    grpo_config,
    group_has_signal,
    vision_token_ids,
    math_samples,
    merge_rollouts,
    rl_sample,
    run_morl,
    select_rows,
)


def test_grpo_config_is_fully_on_policy(tmp_path):
    cfg = MORLConfig(num_generations=4, prompts_per_step=3, gradient_accumulation_steps=2, use_cpu=True,
                     task_weights={"math": 2.0})
    g = grpo_config(cfg, str(tmp_path), ["counting", "math"])
    assert (g.beta, g.num_iterations, g.steps_per_generation, g.gradient_accumulation_steps) == (0.0, 1, 2, 2)
    assert g.vllm_importance_sampling_correction is False
    assert (g.loss_type, g.scale_rewards, g.num_generations) == ("dapo", "group", 4)
    assert g.per_device_train_batch_size == 12 and g.generation_batch_size == 24
    assert g.reward_weights == [1.0, 2.0]
    assert g.generation_kwargs is None


def test_policy_never_samples_vision_tokens(tiny_models, tmp_path):
    """A sampled <|vision_start|> makes the next forward count an image with no pixels (M-RoPE index
    mismatch): every vision special token is suppressed, in transformers' and in vLLM's terms."""
    from trainer.model import load_processor
    from transformers import AutoConfig

    ids = vision_token_ids(AutoConfig.from_pretrained(tiny_models["vl"]))
    tok = load_processor(str(tiny_models["vl"])).tokenizer
    assert sorted(ids) == sorted(tok.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]))
    cfg = MORLConfig(use_cpu=True)
    assert grpo_config(cfg, str(tmp_path), ["math"], ids).generation_kwargs == {"suppress_tokens": ids}
    vllm = MORLConfig(use_cpu=True, use_vllm=True)
    assert grpo_config(vllm, str(tmp_path), ["math"], ids).generation_kwargs == {
        "bad_words": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]}
    assert vision_token_ids(AutoConfig.from_pretrained(tiny_models["lm"])) == []


def test_morl_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        MORLConfig(num_generations=1)
    with pytest.raises(ValueError, match="unknown task"):
        MORLConfig(task_weights={"ocr": 1.0})


def test_pool_sampler_layout_modality_and_easy_pool():
    modality = [False] * 6 + [True] * 4
    pool = ["rl", "rl", "rl", "easy", "easy", "rl", "rl", "rl", "easy", "rl"]
    s = PoolSampler(modality, pool, groups=2, num_generations=3, repeat_count=2, easy_prob=0.0, seed=0, num_batches=50)
    idx = list(s)
    assert len(idx) == len(s) == 50 * 2 * 3 * 2
    for b in range(50):
        batch = idx[b * 12:(b + 1) * 12]
        assert batch[:6] == batch[6:]  # repeated for steps_per_generation x num_iterations
        groups = [batch[g * 3:(g + 1) * 3] for g in range(2)]
        assert all(len(set(g)) == 1 for g in groups)  # num_generations copies in a row
        assert len({modality[g[0]] for g in groups}) == 1  # one modality per batch
        assert all(pool[g[0]] == "rl" for g in groups)  # easy_prob 0: never the easy pool
    drawn = [i for i in idx[::3]]
    assert {modality[i] for i in drawn} == {False, True}
    always = PoolSampler(modality, pool, groups=1, num_generations=2, easy_prob=1.0, seed=0, num_batches=20)
    assert {pool[i] for i in list(always)} == {"easy"}
    some = PoolSampler(modality, pool, groups=1, num_generations=2, easy_prob=0.1, seed=0, num_batches=2000)
    n_easy = sum(pool[i] == "easy" for i in list(some)[::2])
    assert 2000 * 0.1 - 6 * math.sqrt(2000 * 0.09) < n_easy < 2000 * 0.1 + 6 * math.sqrt(2000 * 0.09)
    assert list(PoolSampler(modality, pool, 2, 3, easy_prob=0.1, seed=5)) == list(PoolSampler(modality, pool, 2, 3, easy_prob=0.1, seed=5))


def test_group_signal():
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.5, 0.5, float("nan"), 0.5, float("nan"), float("nan")])
    assert group_has_signal(r[:8], 2) == [False, True, False, False]
    assert group_has_signal(torch.tensor([0.2, 0.2, 0.2, 0.3]), 4) == [True]
    assert group_has_signal(r[6:], 2) == [False, False]  # one or no scorable row


def test_merge_rollouts_repads_and_recounts():
    a = {"prompt_ids": torch.tensor([[0, 5], [6, 7]]), "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
         "completion_ids": torch.tensor([[1, 2, 0], [3, 0, 0]]), "completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
         "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(3),
         "pixel_values": [torch.ones(4, 2), torch.zeros(0, 2)], "image_grid_thw": [torch.tensor([[1, 2, 2]]), torch.zeros(0, 3, dtype=torch.long)],
         "num_images": [1, 0], "mm_token_type_ids": torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])}
    b = {"prompt_ids": torch.tensor([[8, 9, 4]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[2]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([1.0]), "num_items_in_batch": torch.tensor(1),
         "pixel_values": [torch.full((4, 2), 2.0)], "image_grid_thw": [torch.tensor([[1, 2, 2]])], "num_images": [1],
         "mm_token_type_ids": torch.tensor([[1, 1, 0, 0]])}
    m = merge_rollouts([select_rows(a, [1, 0]), b], pad_token_id=0)
    assert m["prompt_ids"].tolist() == [[0, 6, 7], [0, 0, 5], [8, 9, 4]]
    assert m["prompt_mask"].tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert m["completion_ids"].tolist() == [[3, 0, 0], [1, 2, 0], [2, 0, 0]]
    assert m["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert m["mm_token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert m["advantages"].tolist() == [-0.5, 0.5, 1.0]
    assert m["num_images"] == [0, 1, 1] and int(m["num_items_in_batch"]) == 4
    assert [t.shape[0] for t in m["pixel_values"]] == [0, 4, 4]
    with pytest.raises(NotImplementedError, match="cannot merge rollout field 'surprise'"):
        merge_rollouts([{**b, "surprise": torch.ones(1)}, {**b, "surprise": torch.ones(1)}], 0)


@pytest.fixture(scope="module")
def rl_rows(shared_data):
    from curation.reasoning import load_prompts
    from trainer.data import load_image

    rows = math_samples(load_prompts(str(shared_data / "math/gsm8k/test.jsonl"))[:3])
    rows[2]["pool"] = "easy"
    for q in ("Describe a sunny day.", "Name a fruit."):
        rows.append(rl_sample("preference", q))
    with open(shared_data / "grounding/coco_mini_objects.jsonl") as f:
        objs = [json.loads(line) for line in f][:2]
    for o in objs:
        cat = o["objects"][0]["category"]
        n = sum(x["category"] == cat for x in o["objects"])
        img = load_image((shared_data / "grounding" / o["image"]).read_bytes())
        rows.append(rl_sample("counting", f"How many {cat}s are in the image?", n, images=[img]))
    return rows


def test_morl_few_steps_end_to_end(tiny_models, rl_rows, tmp_path):
    from trainer.model import load_model
    from trainer.reward_model import BTRewardModel
    from trainer.rewards import RewardRouter

    bt = BTRewardModel.from_causal_lm(tiny_models["lm"], seed=0)
    router = RewardRouter(preference_model=bt.as_preference_model())
    cfg = MORLConfig(max_steps=3, num_generations=2, prompts_per_step=2, max_completion_length=8, learning_rate=1e-3,
                     max_refill_rounds=1, easy_pool_prob=0.2, use_cpu=True, seed=0)
    res = run_morl(str(tiny_models["vl"]), rl_rows, str(tmp_path), cfg, router)
    assert res.steps == 3 and res.tasks == ["counting", "math", "preference"]
    text, image = {"math", "preference"}, {"counting"}
    seen = []
    for step in range(3):
        logged = {t for t in res.tasks if res.per_task_rewards[t][step] is not None}
        assert logged in ({"math"}, {"preference"}, text, image)  # one modality per rollout batch
        seen.append("image" if logged == image else "text")
        for t in logged:
            assert 0.0 <= res.per_task_rewards[t][step] <= 1.0
    assert set(seen) == {"text", "image"}  # seed 0 draws both modalities in 3 steps
    ds = res.dynamic_sampling
    assert ds["groups"] == 6 and ds["dropped_groups"] > 0 and ds["refill_rounds"] > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(h["clip_ratio/region_mean"] == 0.0 for h in metrics["history"])  # on-policy: ratio 1, no clipping
    before = dict(load_model(str(tiny_models["vl"])).named_parameters())
    after = dict(load_model(res.final_dir).named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # preference groups had signal


def test_mm_token_type_ids_follow_the_left_padded_prompts():
    """Rollouts whose prompts differ in length are left-padded; the image-token types are rebuilt from the
    ids so that Qwen2.5-VL's M-RoPE index sees every image pad inside the attention mask."""
    from types import SimpleNamespace

    from trainer.morl import MORLTrainer

    pad, img, vid = 0, 9, 8
    prompt_ids = torch.tensor([[pad, pad, 5, img, img, 6], [5, img, img, 6, 7, 7]])
    completion_ids = torch.tensor([[3, 4], [3, pad]])
    stale = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]])  # padded apart from the ids
    out = {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "mm_token_type_ids": stale}
    me = SimpleNamespace(_image_pad_token_id=img, _video_pad_token_id=vid)
    got = MORLTrainer._aligned(me, out)["mm_token_type_ids"]
    assert got.tolist() == [[0, 0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]
    assert MORLTrainer._aligned(me, {"prompt_ids": prompt_ids, "mm_token_type_ids": None})["mm_token_type_ids"] is None
