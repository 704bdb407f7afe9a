"""Builders for tiny random-init models, saved in the standard formats their libraries load.

Nothing can be downloaded at run time on the machines this project is tested on, so the demo and
the tests build small models locally. They load through exactly the code paths real checkpoints
use (open_clip's ``local-dir:`` folder here), so pointing a setting at a real checkpoint is the
only change a user makes. Outputs of random models are random: tests assert plumbing with them.
"""

from __future__ import annotations

import json
from pathlib import Path

# A ~3.4M-parameter CLIP (3.2M of it the token embedding): ViT with 64-px input and 16-px patches, 2-layer text tower, BPE tokenizer
# of open_clip (shipped inside the package, so no download).
TINY_CLIP_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Create a random-init open_clip model in ``out_dir`` (open_clip_config.json + safetensors).

    Load it with ``open_clip.create_model_and_transforms('local-dir:' + out_dir)``. Idempotent: an
    existing complete folder is left as it is.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    weights = out / "open_clip_model.safetensors"
    config = out / "open_clip_config.json"
    if weights.exists() and config.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    tmp_w, tmp_c = out / ".tmp-weights.safetensors", out / ".tmp-config.json"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": preprocess}, indent=2))
    tmp_w.rename(weights)
    tmp_c.rename(config)
    return out


# ---------------------------------------------------------------------------------------------
# Tiny Qwen-family models (tokenizer, causal LM, Qwen2.5-VL), built offline.
#
# Each builder writes into a temporary sibling folder and renames it into place at the end, so a
# crash never leaves a folder that a later call mistakes for a complete model; a folder that
# holds the builder's completion marker is returned as it is (idempotent).
# ---------------------------------------------------------------------------------------------

# Special tokens in Qwen2.5's order. <think> and </think> are plain added tokens (not special) so
# that they survive ``skip_special_tokens=True`` decoding, as in Qwen3 / reasoning models.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The Qwen2.5-VL chat template shape: a default system turn when the first message is not a
# system one; each turn is <|im_start|>role\n...<|im_end|>\n; list content renders text items
# verbatim and image/video items as vision placeholders the processor expands to patch tokens.
QWEN_CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if loop.first and message['role'] != 'system' %}
        {{- '<|im_start|>system\\n""" + DEFAULT_SYSTEM_PROMPT + """<|im_end|>\\n' }}
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' }}
    {%- if message['content'] is string %}
        {{- message['content'] }}
    {%- else %}
        {%- for item in message['content'] %}
            {%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif item['type'] == 'video' or 'video' in item %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item['text'] }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen2's pre-tokenizer split: contractions, letter runs with one leading non-letter, single
# digits (so numbers tokenize digit by digit, as in Qwen), punctuation runs, newlines, spaces.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A small English + math corpus, enough for a few hundred merges; the byte alphabet covers the rest.
_TOKENIZER_CORPUS = """\
A photo of a cat sitting on a wooden table next to a cup of coffee.
Two dogs are running across a green field under a blue sky.
The image shows a city street at night with cars and bright lights.
A woman is reading a book in the park while children play nearby.
A red bicycle is leaning against the wall of an old brick building.
The chart compares the number of students in each class this year.
Question: What is the total cost of three apples if one apple costs 2 dollars?
Answer: Each apple costs 2 dollars, so three apples cost 3 * 2 = 6 dollars. The answer is 6.
Let x be the number of pages. Then 2x + 5 = 17, so 2x = 12 and x = 6.
The area of a circle with radius r is pi r^2, and its circumference is 2 pi r.
If a train travels 60 miles per hour for 3 hours, it travels 180 miles.
Solve for y: 3y - 7 = 11. Adding 7 to both sides gives 3y = 18, so y = 6.
The sum of the angles in a triangle is 180 degrees.
Therefore, the final answer is \\boxed{42}.
#### 72
<think>
First, I need to find how many marbles are left. 15 - 4 = 11. Then 11 + 8 = 19.
</think>
The final answer is 19.
\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}
\\sqrt{16} = 4 and 2^{10} = 1024.
In the video, a man opens the door at 00:05 and walks out at 00:12.
Describe the image in detail. The picture contains a table, a chart and some text.
The quick brown fox jumps over the lazy dog. 0123456789 () [] {} + - * / = < > % $ # @ ! ? , . ; :
"""


def _swap_in(tmp: Path, out: Path) -> Path:
    """Move a finished build folder into place (another builder may have won the race)."""
    import shutil

    try:
        tmp.rename(out)
    except OSError:
        if not (out.exists()):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tmp_sibling(out: Path) -> Path:
    import uuid

    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"


def _make_tokenizer():
    """Train the byte-level BPE and wrap it in a ``PreTrainedTokenizerFast`` (deterministic)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS.splitlines(), trainer=trainer)
    # Added tokens go after the learned vocabulary, in Qwen's order, never split or normalized.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def build_tiny_tokenizer(out_dir: str | Path) -> Path:
    """Build a byte-level BPE tokenizer with the Qwen special tokens and chat template.

    Load it with ``AutoTokenizer.from_pretrained(out_dir)``. The vocabulary is the 256 byte
    symbols, merges learned from a small embedded English + math corpus, then the Qwen special
    tokens and ``<think>``/``</think>``. Idempotent and built atomically.
    """
    out = Path(out_dir)
    if (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    tmp = _tmp_sibling(out)
    _make_tokenizer().save_pretrained(str(tmp))
    return _swap_in(tmp, out)


def _token_ids(tok) -> dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS + THINK_TOKENS}


def _save_generation_config(model, ids: dict[str, int], out: Path) -> None:
    from transformers import GenerationConfig

    gen = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.7,
        top_p=1.0,
    )
    model.generation_config = gen
    gen.save_pretrained(str(out))


def build_tiny_causal_lm(out_dir: str | Path, seed: int = 0) -> Path:
    """Create a random-init ``Qwen2ForCausalLM`` (hidden 64, 2 layers, head size 32, float32).

    The folder holds config.json, model.safetensors, generation_config.json and the tiny tokenizer,
    so ``AutoModelForCausalLM``/``AutoTokenizer`` and ``vllm.LLM(out_dir, dtype="float32")`` load
    it like a real checkpoint. Head size 32 because vLLM's CPU attention accepts 32, 64, 80, ...
    only. Idempotent and built atomically; the same seed gives the same weights.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    tok = _make_tokenizer()
    ids = _token_ids(tok)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    tmp = _tmp_sibling(out)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    _save_generation_config(model, ids, tmp)
    return _swap_in(tmp, out)


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Create a random-init Qwen2.5-VL (2-layer ViT, 2-layer LLM, hidden 64) with its processor.

    ``AutoProcessor.from_pretrained``, ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and
    ``vllm.LLM(out_dir, dtype="float32")`` load it. Images are resized to 56x56 .. 112x112 pixels
    (4 to 16 image tokens after the 2x2 merge) to keep CPU runs fast. Idempotent, atomic, seeded.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "processor_config.json").exists():
        return out
    tok = _make_tokenizer()
    ids = _token_ids(tok)
    hidden, head_dim = 64, 32
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": hidden // head_dim,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            # mrope_section splits the rotary half-dimension (head_dim / 2 = 16) into
            # temporal / height / width parts.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "dtype": "float32",
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden,  # the merger projects straight into the LLM's width
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    tmp = _tmp_sibling(out)
    model.save_pretrained(str(tmp))
    processor.save_pretrained(str(tmp))
    _save_generation_config(model, ids, tmp)
    return _swap_in(tmp, out)
