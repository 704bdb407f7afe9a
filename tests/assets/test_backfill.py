"""A range of drops materializes as one run: one Beam job per asset for all of them (BackfillPolicy)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from assets import image_text
from assets.partitions import image_text_drops, range_tags
from assets.resources import BeamResource, ClipModelResource, GenerationResource, StorageResource


def _landing(root: Path, shared: Path) -> list[str]:
    coco = [json.loads(x) for x in (shared / "image_caption/coco_mini/captions.jsonl").read_text().splitlines()][:6]
    for name, rows in (("d1", coco[:3]), ("d2", coco[3:])):
        d = root / "landing" / "image_text" / name
        d.mkdir(parents=True)
        (d / "samples.jsonl").write_text("".join(json.dumps(
            {"path": str(shared / "image_caption/coco_mini" / c["image"]), "caption": c["captions"][0]}) + "\n" for c in rows))
    return ["d1", "d2"]


def test_per_drop_assets_run_a_backfill_range_as_one_job() -> None:
    partitioned = [a for a in image_text.ASSETS if a.partitions_def is not None]
    assert partitioned and all(a.backfill_policy == dg.BackfillPolicy.single_run() for a in partitioned)


def test_range_tags_split_only_where_the_registered_order_has_a_gap() -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(image_text_drops.name, ["a", "b", "c", "d"])
        assert range_tags(instance, image_text_drops, ["b", "a", "c"]) == [
            {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "c"}]
        assert [t["dagster/asset_partition_range_start"] for t in range_tags(instance, image_text_drops, ["a", "d"])] == ["a", "d"]


def test_one_run_materializes_every_drop_of_the_range(tmp_path: Path, shared_data: Path) -> None:
    drops = _landing(tmp_path, shared_data)
    resources = {"storage": StorageResource(root=str(tmp_path)), "beam_runner": BeamResource(),
                 "clip": ClipModelResource(), "vlm": GenerationResource(model="unused")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(image_text_drops.name, drops)
        [tags] = range_tags(instance, image_text_drops, drops)
        result = dg.materialize(image_text.ASSETS, selection=["image_text_samples", "image_phash"], instance=instance,
                                resources=resources, tags=tags)
        assert result.success
        mats = result.asset_materializations_for_node("image_phash")
        assert sorted(m.partition for m in mats) == drops
        md = mats[0].metadata
        assert md["records_out"].value == 6 and md["drops"].value == "d1, d2"
        assert md["beam_counters"].value == {"phash_kept": 6}
        assert len(instance.get_runs()) == 1


def test_executor_runs_steps_in_parallel_and_one_engine_at_a_time() -> None:
    from assets.definitions import defs, executor
    from assets.resources import ENGINE_TAG

    job = defs.resolve_job_def("image_text_ingest")
    assert job.executor_def is executor and executor.name == "multiprocess"
    from assets import definitions

    tagged = sorted(k.to_user_string() for a in definitions.defs.assets for k in a.keys
                    if all(a.op.tags.get(t) == v for t, v in ENGINE_TAG.items()))
    assert tagged == ["cot_candidates", "recaptions", "video_captions"]
