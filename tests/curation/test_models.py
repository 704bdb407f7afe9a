"""curation.models: the tiny Qwen tokenizer, causal LM and Qwen2.5-VL load and run through transformers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from curation.models import (
    QWEN_SPECIAL_TOKENS,
    THINK_TOKENS,
    build_tiny_causal_lm,
    build_tiny_qwen2_5_vl,
    build_tiny_tokenizer,
)

COCO = "image_caption/coco_mini/images/train2017/000000493652.jpg"  # 640 x 399


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    # A fixed folder under the session's base temp: test_generation uses the same one, and the
    # builders are idempotent, so the models are built once per session.
    root = tmp_path_factory.getbasetemp() / "tiny_models"
    return {
        "tokenizer": build_tiny_tokenizer(root / "tokenizer"),
        "lm": build_tiny_causal_lm(root / "lm"),
        "vl": build_tiny_qwen2_5_vl(root / "vl"),
    }


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models["tokenizer"]))


def test_special_tokens_follow_the_vocabulary_in_qwen_order(tok):
    n = len(tok)
    names = list(QWEN_SPECIAL_TOKENS + THINK_TOKENS)
    assert tok.convert_ids_to_tokens(list(range(n - len(names), n))) == names
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    # Special tokens are never split; <think> survives skip_special_tokens (reasoning format checks need it).
    ids = tok("<think>ok</think><|im_end|>")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<think>") and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "<think>ok</think>"


@pytest.mark.parametrize(
    "text",
    ["Therefore, the final answer is \\boxed{42}.", "π ≈ 3.14159 — café, 数学!\n\tx^2 + y^2 = r^2", "#### 72\n"],
)
def test_byte_level_bpe_round_trips_any_text(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text


def test_digits_are_split_and_merges_were_learned(tok):
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert tok.tokenize(" answer") == ["Ġanswer"]


def test_chat_template_text(tok):
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Why?"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n"
        "<|im_start|>user\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_system_and_images(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}, {"type": "image"}]},
    ]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe."
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
    )


def test_causal_lm_config_and_generation(tiny_models, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["lm"]))
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim) == ("qwen2", 64, 2, 32)
    assert cfg.vocab_size == len(tok) and model.dtype == torch.float32
    gen = json.loads((tiny_models["lm"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)


def test_builders_are_idempotent_seeded_and_leave_no_temp(tiny_models, tmp_path):
    lm = tiny_models["lm"]
    before = (lm / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_causal_lm(lm) == lm
    assert (lm / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in lm.parent.iterdir() if p.name.startswith(".tmp-")]
    # Same seed, fresh folder: byte-identical weights and tokenizer.
    again = build_tiny_causal_lm(tmp_path / "lm")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (lm / name).read_bytes(), name


def _image(shared_data: Path) -> Image.Image:
    return Image.open(io.BytesIO((shared_data / COCO).read_bytes())).convert("RGB")


def test_qwen2_5_vl_processor_expands_image_tokens(tiny_models, shared_data):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(tiny_models["vl"]))
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], images=[_image(shared_data)], return_tensors="pt")
    # 640x399 shrinks to 140x84 px (sides multiples of 28, <= 112*112 pixels): a 1x6x10 grid of
    # 14-px patches (60 rows of 3*2*14*14 values), merged 2x2 into 15 image tokens.
    assert batch["image_grid_thw"].tolist() == [[1, 6, 10]]
    assert tuple(batch["pixel_values"].shape) == (60, 1176)
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_pad).sum()) == 15


def test_qwen2_5_vl_modules_and_generation(tiny_models, shared_data):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_models["vl"]))
    # The module paths the trainer stages freeze and unfreeze (transformers 5.x layout).
    assert type(model.model.visual).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"
    assert type(model.model.visual.merger).__name__ == "Qwen2_5_VLPatchMerger"
    assert type(model.model.language_model).__name__ == "Qwen2_5_VLTextModel"
    assert isinstance(model.lm_head, torch.nn.Linear)
    cfg = model.config
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    assert max(cfg.vision_config.fullatt_block_indexes) < cfg.vision_config.depth
    assert model.model.visual.merger.mlp[-1].out_features == cfg.text_config.hidden_size

    proc = AutoProcessor.from_pretrained(str(tiny_models["vl"]))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], images=[_image(shared_data)], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 4)
