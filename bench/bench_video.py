"""Frame sampling speed: keyframe-aware seeking vs a decode-everything select pass.

    python -m bench.bench_video            # 60 s 720p H.264, GOP 250 and GOP 50, best of 3
    python -m bench.bench_video --quick    # 20 s, best of 1; prints only (add --write to write)

Test videos are made with ffmpeg in a temp dir: ``testsrc2`` 1280x720 at 25 fps, libx264
``-preset veryfast`` (CABAC, 3 B-frames, as common encoders), yuv420p, with ``-g 250`` (a keyframe
every 10 s: x264's default keyint, what many uploads carry) and ``-g 50`` (every 2 s: streaming
encoders, phone cameras). Eight frames at the centres of eight equal slices of the duration
(``curation.video.sample_times``), scaled to 448 px, as JPEG. Methods, each returning the same bytes:

(a) ``sample_frames(method="auto")``: keyframe-aware runs (keyframe list read included), 2 at a time;
(a') the same with ``exact=False``: the decoder skips non-reference frames (first reference frame at
     or after each time: not the same bytes, hence the count of identical JPEGs);
(b) ``sample_frames(method="seek")``: one ``-ss`` seek per frame, 2 at a time;
(c) ``sample_frames(method="select")``: one pass with a ``select`` filter: decodes everything;
(d) decode-only bound: ``ffmpeg -i FILE -map 0:v:0 -f null -`` (what (c) cannot beat).

Goal: (a) >= 2.5x faster than (c) in wall time. Wall times are the best of the rounds; CPU is
user + system time of the ffmpeg children in that round.

What bounds (a): an exact frame at time t costs the decode from the keyframe before t. With a 10 s
GOP, the 8 centred targets of a 60 s video lie 1.25-8.75 s after their keyframes (40 s of the 60 s
in total), so any exact method decodes two thirds of the file; the gain over (c) comes from the
third it skips and from running 2 processes on 2 cores. With a 2 s GOP only about 8 s are decoded.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import machine, markdown_table, write_block
from curation.video import keyframe_times, sample_frames, sample_times

N_FRAMES = 8
SIZE = 448


def make_video(path: Path, seconds: int, gop: int) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size=1280x720:rate=25:duration={seconds}", "-c:v", "libx264", "-preset", "veryfast",
         "-g", str(gop), "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float, object]:
    """(best wall s, CPU s of that round, last result)."""
    best = (float("inf"), 0.0)
    out = None
    for _ in range(rounds):
        c0, t0 = _children_cpu(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
        if wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], out


def decode_only(path: Path) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0",
                    "-f", "null", "-"], check=True)


def bench_one(path: Path, seconds: int, gop: int, rounds: int) -> list[list[object]]:
    times = sample_times(0, seconds, N_FRAMES)
    kf = keyframe_times(path)
    runs = {
        "sampler (auto, keyframe-aware)": lambda: sample_frames(path, times, SIZE, method="auto"),
        "sampler, exact=False (skip non-ref frames)": lambda: sample_frames(path, times, SIZE, exact=False),
        "seek per frame, 2 at a time": lambda: sample_frames(path, times, SIZE, method="seek"),
        "select filter (decode all)": lambda: sample_frames(path, times, SIZE, method="select"),
        "decode-only bound (-f null)": lambda: decode_only(path),
    }
    res = {name: timed(fn, rounds) for name, fn in runs.items()}
    ref = res["select filter (decode all)"]
    rows = []
    for name, (wall, cpu, out) in res.items():
        same = "" if out is None else ("yes" if out == ref[2] else f"{sum(a == b for a, b in zip(out, ref[2]))}/8")
        rows.append([f"{gop} ({gop / 25:g} s, {len(kf)} keyframes)", name, f"{wall:.2f}", f"{cpu:.2f}",
                     f"{ref[0] / wall:.2f}x", f"{ref[1] / cpu:.2f}x", same])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s videos, 1 round, print only")
    parser.add_argument("--write", action="store_true", help="write the README block even with --quick")
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds or (20 if args.quick else 60)
    rounds = args.rounds or (1 if args.quick else 3)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        for gop in (250, 50):
            path = Path(tmp) / f"testsrc2_720p_{seconds}s_g{gop}.mp4"
            t0 = time.perf_counter()
            make_video(path, seconds, gop)
            print(f"made {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
            rows += bench_one(path, seconds, gop, rounds)
    table = markdown_table(["GOP (frames)", "method", "wall s", "CPU s", "vs select (wall)", "vs select (CPU)",
                           "same JPEGs as select"], rows)
    body = (
        f"{N_FRAMES} frames ({SIZE} px JPEG) from a {seconds} s 1280x720 25 fps H.264 video (testsrc2, "
        f"x264 veryfast), best of {rounds}; {machine()}; load average {os.getloadavg()[0]:.1f} at the end "
        f"(other jobs share the cores: compare the CPU columns).\n\n{table}"
    )
    if args.quick and not args.write:
        print(body)
    else:
        write_block("video_frames", body)


if __name__ == "__main__":
    main()
