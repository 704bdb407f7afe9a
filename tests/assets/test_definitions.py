"""The Definitions load, the graph has the documented shape, and the sensor registers new drops."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import defs
from assets.partitions import document_drops, image_text_drops, video_drops
from assets.resources import StorageResource
from assets.sensors import document_drop_sensor, image_text_drop_sensor, video_drop_sensor

IMAGE_TEXT = ["image_text_samples", "image_phash", "image_neardup_clusters", "caption_quality", "clip_scores",
              "metaclip_metadata", "metaclip_entry_counts", "metaclip_balanced", "recaptions", "image_text_shards"]
REASONING = ["reasoning_prompts", "cot_candidates", "cot_verified", "reasoning_sft_shards", "rl_prompt_pool"]
DOCUMENTS = ["documents_parsed", "document_quality", "document_minhash_clusters", "ocr_grounding_samples",
             "interleaved_shards", "ocr_grounding_shards"]
VIDEO = ["video_probe", "video_neardup_clusters", "video_clips", "video_captions", "temporal_grounding_samples",
         "video_shards"]
TRAINING = ["stage1_projector_warmup", "stage2_vision_language_alignment", "stage3_multimodal_pretraining",
            "stage4_long_context_sft", "morl_policy"]


def test_definitions_load_with_groups_and_partitions() -> None:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(IMAGE_TEXT) | {"benchmark_fingerprints"} <= keys
    for name in IMAGE_TEXT:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "image_text"
    partitioned = {n for n in IMAGE_TEXT if graph.get(dg.AssetKey(n)).partitions_def is not None}
    assert partitioned == {"image_text_samples", "image_phash", "caption_quality", "clip_scores", "metaclip_balanced", "recaptions"}
    for name in REASONING:
        assert graph.get(dg.AssetKey(name)).group_name == "reasoning"
    for group, names in (("documents", DOCUMENTS), ("video", VIDEO), ("training", TRAINING)):
        for name in names:
            assert graph.get(dg.AssetKey(name)).group_name == group, name
    partitioned = {n for n in DOCUMENTS if graph.get(dg.AssetKey(n)).partitions_def is not None}
    assert partitioned == {"documents_parsed", "document_quality", "ocr_grounding_samples"}
    partitioned = {n for n in VIDEO if graph.get(dg.AssetKey(n)).partitions_def is not None}
    assert partitioned == {"video_probe", "video_clips", "video_captions", "temporal_grounding_samples"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("morl_policy")).parent_keys}
    assert parents == {"stage4_long_context_sft", "rl_prompt_pool", "ocr_grounding_shards", "video_shards"}
    # Training sits downstream of the shard assets of every track.
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("stage2_vision_language_alignment")).parent_keys}
    assert parents == {"stage1_projector_warmup", "interleaved_shards"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("stage1_projector_warmup")).parent_keys}
    assert parents == {"image_text_shards"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("image_text_shards")).parent_keys}
    assert parents == {"recaptions"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("image_neardup_clusters")).parent_keys}
    assert parents == {"image_phash", "benchmark_fingerprints"}


def test_sensor_registers_each_new_drop_once(tmp_path: Path) -> None:
    for name in ("drop-b", "drop-a"):
        (tmp_path / "landing" / "image_text" / name).mkdir(parents=True)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"storage": StorageResource(root=str(tmp_path))})
        result = image_text_drop_sensor(ctx)
        assert [r.partition_key for r in result.run_requests] == ["drop-a", "drop-b"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["drop-a", "drop-b"]
        instance.add_dynamic_partitions(image_text_drops.name, ["drop-a", "drop-b"])
        again = image_text_drop_sensor(dg.build_sensor_context(instance=instance, resources={"storage": StorageResource(root=str(tmp_path))}))
        assert not again.run_requests and "no new drops" in again.skip_reason.skip_message


@pytest.mark.parametrize("sensor, partitions_def, track, job, first", [
    (document_drop_sensor, document_drops, "documents", "document_ingest", {"documents_parsed"}),
    (video_drop_sensor, video_drops, "video", "video_ingest", {"video_probe"}),
])
def test_track_sensor_requests_its_ingest_job(tmp_path: Path, sensor, partitions_def, track, job, first) -> None:
    (tmp_path / "landing" / track / "drop-1").mkdir(parents=True)
    other = "image_text" if track != "image_text" else "video"
    (tmp_path / "landing" / other / "other").mkdir(parents=True)  # another track's drop: not ours
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources={"storage": StorageResource(root=str(tmp_path))}))
        assert [r.partition_key for r in result.run_requests] == ["drop-1"]
        assert result.dynamic_partitions_requests[0].partitions_def_name == partitions_def.name
        assert {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys} == first
