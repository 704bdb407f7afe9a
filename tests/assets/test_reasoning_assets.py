"""The reasoning asset group through Dagster: exact outcomes with a scripted engine, and the real
tiny causal LM through in-process vLLM for the plumbing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from assets import reasoning
from assets.partitions import reasoning_drops
from assets.resources import BeamResource, GenerationResource, StorageResource
from curation import shards, storage
from curation.models import build_tiny_causal_lm
from pipelines.common import manifest_url
from scripted_engine import GSM8K


def _root(tmp_path: Path, n: int) -> Path:
    rows = [json.loads(x) for x in GSM8K.read_text().splitlines()][:n]
    drop = tmp_path / "landing" / "reasoning" / "gsm8k-0001"
    drop.mkdir(parents=True)
    (drop / "prompts.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    return tmp_path


def _materialize(root: Path, llm: GenerationResource, run_config: dict | None = None) -> None:
    resources = {"storage": StorageResource(root=str(root)), "beam_runner": BeamResource(), "reasoning_llm": llm,
                 "vlm": GenerationResource(model="models/tiny-qwen2_5_vl", max_model_len=2048)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(reasoning_drops.name, ["gsm8k-0001"])
        for names, part in ((["reasoning_prompts", "cot_candidates", "cot_verified"], "gsm8k-0001"),
                            (["reasoning_sft_shards", "rl_prompt_pool"], None)):
            result = dg.materialize(reasoning.ASSETS, selection=names, partition_key=part, instance=instance,
                                    resources=resources, run_config=run_config if part else None)
            assert result.success


def test_reasoning_assets_with_scripted_engine(tmp_path: Path) -> None:
    root = _root(tmp_path, 6)
    _materialize(root, GenerationResource(kind="factory", model="scripted_engine:ScriptedEngine"))
    stats = storage.read_records(manifest_url(str(root), "cot_prompt_stats", "gsm8k-0001"))
    assert [(s["n_correct"], s["n_accepted"], s["pool"]) for s in stats] == [(2, 1, "rl")] * 6
    latest = storage.read_json(str(root / "shards" / "reasoning_sft" / "LATEST.json"))
    assert shards.read_index(latest["url"]).num_samples == 6
    pool = storage.read_records(manifest_url(str(root), "rl_prompt_pool", "all"))
    assert Counter(r["pool"] for r in pool) == {"rl": 6}


@pytest.mark.slow
def test_reasoning_assets_with_real_tiny_model(tmp_path: Path) -> None:
    root = _root(tmp_path, 4)
    build_tiny_causal_lm(root / "models" / "tiny-causal-lm")
    config = {"ops": {"cot_candidates": {"config": {"n": 2, "max_tokens": 24}}}}
    _materialize(root, GenerationResource(model="models/tiny-causal-lm"), config)
    cands = storage.read_records(manifest_url(str(root), "cot_candidates", "gsm8k-0001"))
    assert len(cands) == 8 and all(c["error"] is None and c["n_tokens"] > 0 for c in cands)
    # A random model never verifies: every prompt is 'unsolved', no SFT sample, nothing lost.
    stats = storage.read_records(manifest_url(str(root), "cot_prompt_stats", "gsm8k-0001"))
    assert len(stats) == 4 and {s["pool"] for s in stats} == {"unsolved"}
    # Re-materializing answers from the response cache.
    _materialize(root, GenerationResource(model="models/tiny-causal-lm"), config)
    again = storage.read_records(manifest_url(str(root), "cot_candidates", "gsm8k-0001"))
    assert all(c["cached"] for c in again) and sorted(c["text"] for c in again) == sorted(c["text"] for c in cands)


@pytest.mark.slow
def test_visual_prompts_go_through_the_vlm(tmp_path: Path, shared_data: Path) -> None:
    """TabMWP questions whose table is an image: routed to the VLM with the image attached."""
    from assets.demo import ensure_models

    tab = shared_data / "math" / "visual_tabmwp"
    rows = [json.loads(x) for x in (tab / "test300.jsonl").read_text().splitlines()][:3]
    drop = tmp_path / "landing" / "reasoning" / "gsm8k-0001"
    drop.mkdir(parents=True)
    (drop / "tabmwp.jsonl").write_text("".join(json.dumps(
        {"question": r["question"], "answer": r["answer"], "image": str(tab / r["image"])}) + "\n" for r in rows))
    ensure_models(str(tmp_path))
    config = {"ops": {"cot_candidates": {"config": {"n": 1, "max_tokens": 16}}}}
    _materialize(tmp_path, GenerationResource(model="models/tiny-causal-lm"), config)
    prompts = storage.read_records(manifest_url(str(tmp_path), "reasoning_prompts", "gsm8k-0001"))
    assert [len(p["images"]) for p in prompts] == [1, 1, 1]
    cands = storage.read_records(manifest_url(str(tmp_path), "cot_candidates", "gsm8k-0001"))
    assert len(cands) == 3 and all(c["error"] is None for c in cands)
    assert {Path(c["model"]).name for c in cands} == {"tiny-qwen2_5_vl"}
