"""The whole image-text graph materialized through Dagster on real data, twice: identical shards."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from assets import demo, training
from assets.resources import StorageResource
from curation import shards, storage
from pipelines.common import manifest_url, quarantine_url


def _drops(root: Path, shared: Path) -> list[str]:
    tux = [json.loads(x) for x in (shared / "image_caption/tuxpaint_stamps/captions.jsonl").read_text().splitlines()][:40]
    coco = [json.loads(x) for x in (shared / "image_caption/coco_mini/captions.jsonl").read_text().splitlines()][:30]
    rows = {
        "d1-tuxpaint": [{"path": str(shared / "image_caption/tuxpaint_stamps" / t["image"]), "caption": t["caption"]} for t in tux],
        "d2-coco": [{"path": str(shared / "image_caption/coco_mini" / c["image"]), "caption": c["captions"][0]} for c in coco]
        + [{"path": str(shared / "image_caption/coco_mini" / coco[0]["image"]), "caption": coco[0]["captions"][1]}],
    }
    for name, rs in rows.items():
        d = root / "landing" / "image_text" / name
        d.mkdir(parents=True)
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return sorted(rows)


def _digest(folder: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.mark.slow
def test_graph_twice_gives_identical_shards(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "root"
    drops = _drops(root, shared_data)
    demo.ensure_models(str(root))
    with dg.instance_for_test() as instance:
        first = demo.materialize_all(str(root), drops, instance=instance)
        url = first["shards"]
        digest1 = _digest(url)
        second = demo.materialize_all(str(root), drops, instance=instance)
        assert second["shards"] == url and _digest(url) == digest1
        # The runs are recorded per partition in the instance.
        mats = instance.fetch_materializations(dg.AssetKey("image_phash"), limit=10).records
        assert sorted({m.partition_key for m in mats}) == drops
        # Stage 1 trains on the shards the pipeline just wrote (downstream asset, tiny budget).
        trained = dg.materialize(training.ASSETS, selection=["stage1_projector_warmup"], instance=instance, resources={
            "storage": StorageResource(root=str(root)),
            "trainer": training.TrainerResource(max_steps=2, seq_len=512, cpu=True)})
        md = trained.asset_materializations_for_node("stage1_projector_warmup")[0].metadata
        assert md["steps"].value == 2 and md["shards"].value == {"image_text": url}
        assert md["samples_by_kind"].value["image_caption"] >= 2
        assert all(c.passed for c in trained.get_asset_check_evaluations())

    # Exact outcomes on this data: the second COCO caption of the same image is an exact duplicate.
    q = storage.read_records(quarantine_url(str(root), "image_neardup_clusters", "d2-coco"))
    assert Counter(r["reason"] for r in q)["exact_duplicate"] == 1
    index = shards.read_index(url)
    assert index.num_samples == first["samples_out"] > 0
    assert first["pairs_in"] == 71
    kept = sum(len(storage.read_records(manifest_url(str(root), "metaclip_balanced", d))) for d in drops)
    assert kept == index.num_samples
    for tar in index.tar_urls:
        assert shards.verify_shard(tar) == []
