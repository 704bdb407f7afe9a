"""The Definitions load, the graph has the documented shape, and the sensor registers new drops."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.definitions import defs
from assets.partitions import image_text_drops
from assets.resources import StorageResource
from assets.sensors import image_text_drop_sensor

IMAGE_TEXT = ["image_text_samples", "image_phash", "image_neardup_clusters", "caption_quality", "clip_scores",
              "metaclip_metadata", "metaclip_entry_counts", "metaclip_balanced", "recaptions", "image_text_shards"]
REASONING = ["reasoning_prompts", "cot_candidates", "cot_verified", "reasoning_sft_shards", "rl_prompt_pool"]


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
