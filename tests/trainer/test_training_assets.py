"""The training assets: the four stages and MORL materialized in order on a temporary instance, on real
shards (COCO photos and Tux Paint stamps with their captions, chat-format reasoning samples, COCO object
boxes as grounding samples) laid out under shards/<dataset>/ as the shard assets write them."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from trainer_fixtures import SFT_SAMPLES, caption_rows, caption_sample, sft_sample

from assets import training
from assets.resources import StorageResource
from curation import shards

TRAINABLE = {1: 82_304, 2: 240_896, 3: 398_272, 4: 398_272}  # merger / ViT / all / all of the tiny model


def _publish(root: Path, dataset: str, samples: list[shards.Sample], per_shard: int = 4) -> str:
    out = root / "shards" / dataset / "v1"
    index = shards.write_shards(iter(samples), str(out), dataset_name=dataset, samples_per_shard=per_shard)
    (root / "shards" / dataset / "LATEST.json").write_text(json.dumps({"version": "v1", "url": index.url}))
    return index.url


def _grounding_samples(shared_data: Path, n: int) -> list[shards.Sample]:
    """Phrase -> box chat samples (the box in absolute pixels, as the reward router reads it)."""
    out = []
    with open(shared_data / "grounding/coco_mini_objects.jsonl") as f:
        for line in list(f)[:n]:
            o = json.loads(line)
            obj = max(o["objects"], key=lambda x: x["area"])
            x, y, w, h = obj["bbox_xywh"]
            box = [round(x), round(y), round(x + w), round(y + h)]
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Locate the {obj['category']}."}]},
                    {"role": "assistant", "content": json.dumps(box)}]
            img = (shared_data / "grounding" / o["image"]).read_bytes()
            key = f"coco{o['coco_id']}"
            out.append(shards.Sample(key, {"jpg": img, "json": json.dumps({"id": key, "messages": msgs}).encode()}))
    return out


@pytest.fixture(scope="module")
def trained(shared_data, tiny_vl, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_root")
    _publish(root, "image_text", [caption_sample(r) for r in caption_rows(shared_data, 6, 2)])
    _publish(root, "reasoning_sft", [sft_sample(o) for o in SFT_SAMPLES], per_shard=2)
    _publish(root, "grounding", _grounding_samples(shared_data, 4), per_shard=2)
    _publish(root, "video", [])  # a curation run that kept nothing: the stages treat it as no shards
    instance = dg.DagsterInstance.ephemeral()
    resources = {"storage": StorageResource(root=str(root)),
                 "trainer": training.TrainerResource(base_model=str(tiny_vl), max_steps=2, seq_len=512, cpu=True,
                                                     morl_max_steps=2, morl_samples_per_task=4)}
    results = {}
    for name in (*training.STAGES.values(), "morl_policy"):
        results[name] = dg.materialize(training.ASSETS, selection=[name], instance=instance, resources=resources)
    return root, instance, resources, results


def _md(result, name: str) -> dict:
    mats = result.asset_materializations_for_node(name)
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def test_stages_train_in_order_with_their_freezing(trained, tiny_vl):
    root, _instance, _res, results = trained
    start = str(tiny_vl)
    for stage, name in training.STAGES.items():
        r = results[name]
        assert r.success
        md = _md(r, name)
        assert md["steps"] == 2 and md["trainable_parameters"] == TRAINABLE[stage]
        assert md["start_weights"] == start  # stage N starts from stage N-1's final weights
        assert md["tokens_seen"] > 0 and md["loss_first"] > 0
        assert Path(md["loss_curve_png"]).stat().st_size > 1000
        checks = {c.check_name: c.passed for c in r.get_asset_check_evaluations()}
        assert checks == {"loss_finite": True, "frozen_modules_unchanged": True}
        latest = json.loads((root / "checkpoints" / name / "LATEST.json").read_text())
        assert latest["final"] == md["final_weights"]
        start = md["final_weights"]
    s1 = _md(results[training.STAGES[1]], training.STAGES[1])
    assert "| model.language_model | 0 |" in s1["parameters"]  # frozen in stage 1, and bitwise unchanged
    assert set(_md(results[training.STAGES[1]], training.STAGES[1])["shards"]) == {"image_text"}
    s3 = _md(results[training.STAGES[3]], training.STAGES[3])
    assert set(s3["shards"]) == {"image_text", "reasoning_sft", "grounding"}
    assert "interleaved" in s3["kinds_without_shards"] and "video" in s3["kinds_without_shards"]


def test_rematerializing_a_stage_resumes_its_finished_run(trained):
    root, instance, resources, results = trained
    name = training.STAGES[1]
    before = _md(results[name], name)
    again = _md(dg.materialize(training.ASSETS, selection=[name], instance=instance, resources=resources), name)
    assert again["final_weights"] == before["final_weights"] and again["steps"] == 2
    assert again["loss_first"] == before["loss_first"]  # the same run, read back rather than retrained


def test_morl_runs_on_grounding_prompts_from_the_shards(trained):
    _root, _instance, _res, results = trained
    r = results["morl_policy"]
    assert r.success
    md = _md(r, "morl_policy")
    assert md["steps"] == 2 and md["tasks"] == "grounding"
    assert md["prompts_by_task"] == {"grounding": 4}
    assert md["start_weights"] == _md(results[training.STAGES[4]], training.STAGES[4])["final_weights"]
    assert {c.check_name: c.passed for c in r.get_asset_check_evaluations()} == {"rewards_in_unit_interval": True}
    assert Path(md["final_weights"], "config.json").exists()


def test_a_stage_without_any_shards_fails_clearly(tmp_path, tiny_vl):
    resources = {"storage": StorageResource(root=str(tmp_path)),
                 "trainer": training.TrainerResource(base_model=str(tiny_vl), max_steps=1, cpu=True)}
    with pytest.raises(dg.Failure, match="no shards of those kinds exist"):
        dg.materialize(training.ASSETS, selection=[training.STAGES[1]], instance=dg.DagsterInstance.ephemeral(),
                       resources=resources)
