"""Fixtures for the trainer tests: the tiny models and real shards written by curation.shards.

Image-caption shards hold real images from ../shared/data/image_caption (read in place) with their
real captions, in the layout pipelines/image_text.py writes (image + txt + json metadata); SFT shards
hold chat-format samples as pipelines/reasoning.py writes them (json with messages).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_fixtures import SFT_SAMPLES, caption_rows, caption_sample, sft_sample

from curation import shards
from curation.models import build_tiny_causal_lm, build_tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "tiny_models"  # shared with tests/curation (idempotent builders)
    return {"lm": build_tiny_causal_lm(root / "lm"), "vl": build_tiny_qwen2_5_vl(root / "vl")}


@pytest.fixture(scope="session")
def tiny_vl(tiny_models) -> Path:
    return tiny_models["vl"]


@pytest.fixture(scope="session")
def caption_shards(shared_data, tmp_path_factory) -> str:
    """12 real pairs (8 COCO photos, 4 Tux Paint stamps) in 3 shards of 4."""
    out = tmp_path_factory.mktemp("shards") / "image_text" / "v1"
    shards.write_shards((caption_sample(r) for r in caption_rows(shared_data, 8, 4)), str(out),
                        dataset_name="image_text", samples_per_shard=4)
    return str(out)


@pytest.fixture(scope="session")
def sft_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shards") / "reasoning_sft" / "v1"
    shards.write_shards((sft_sample(o) for o in SFT_SAMPLES), str(out), dataset_name="reasoning_sft",
                        samples_per_shard=2)
    return str(out)
