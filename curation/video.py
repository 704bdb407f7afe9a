"""Video operators: probe, scene cuts, clip planning, frame sampling and near-duplicate videos.

Everything runs the ffmpeg / ffprobe command-line tools (ffmpeg >= 4.4; measured with 5.1) on local
files: pipelines stage other fsspec URLs to a local file first (ffmpeg seeks, and the GIF trailer
check reads the file). Failures are values where a record is judged (``probe`` returns a
``VideoInfo`` with a reason) and ``VideoError`` exceptions (with a ``reason``) where a stage cannot
produce its output.

Probe (``probe``): ``ffmpeg.probe`` (ffprobe's JSON), then checks in this order; the first that
applies wins:

| reason | when |
|---|---|
| ``zero_length`` | the file has 0 bytes, or the duration is unknown or <= 0, or the stream has < 2 frames (a still GIF is an image, not a video) |
| ``timeout`` | ffprobe runs over ``VideoLimits.timeout_s`` (it is killed) |
| ``unreadable_video`` | ffprobe fails (no container, moov atom missing: an MP4 cut before its index) |
| ``no_video_stream`` | no video stream (audio-only; cover art, ``attached_pic``, is not video) |
| ``too_long`` | duration > ``VideoLimits.max_duration_s`` |
| ``too_small`` | shorter displayed side < ``VideoLimits.min_side`` |
| ``unreadable_video`` | tail check: decoding the last ``tail_s`` seconds gives no frame or ffmpeg reports a cut-short file |

Why the tail check: an MP4 whose index (moov) sits before the media data, a WebM or a GIF cut short
still probe fine, with the duration of the complete file. Decoding the last second (one keyframe
seek) finds them: it yields no frame (MP4, WebM cut early) or ffmpeg warns "partial file" /
"File ended prematurely" (cut late). A GIF must end with its trailer byte 0x3B. Costs one seek and
about a second of decoding per file; ``check_tail=False`` skips it. Only containers that state their
duration in a header or index (MP4/MOV, Matroska/WebM, AVI) are decoded: MPEG-TS measures its
duration from the timestamps at the end of the file, so a cut file is just shorter, and ffmpeg's
seek in it lands on the next keyframe after the seek point, often past the end (no frame from an
intact file). Seek warnings such as
"error while decoding MB" are not treated as damage: they appear on intact files when a seek lands
on a recovery point that is not an IDR frame (seen on the real cockatoo clip).

Fields: ``duration`` from the container, else the stream, else frames / fps; ``fps`` from
``avg_frame_rate`` (``r_frame_rate`` is the timebase guess and can be absurd: 90000/1 on a real
phone clip whose average rate is 10.5); ``rotation`` is the clockwise rotation a player applies
(display-matrix side data, else the legacy ``rotate`` tag), and ``display_width/height`` are the
size after it. ffmpeg applies the rotation when decoding, so sampled frames come out upright.

Scene cuts (``detect_scenes``): ffmpeg's ``select`` filter scores every frame against the previous
one (``scene``, 0..1, a normalised sum of absolute differences) in one decode pass; frames are
passed through ``metadata=print`` and the score of every frame is parsed, so ``scene_scores`` also
serves histograms and other thresholds without a second pass. A cut is the ``pts_time`` (seconds
from the file start) of the first frame of the new shot. Threshold 0.3 finds all five hard cuts of
the derived concat clip exactly, plus two real cuts inside its source segments (see tests).

Clip planning (``plan_clips``): the rule is documented on the function.

Frame sampling (``sample_frames``): the frame for time T is the first frame with pts >= T in every
method, so all methods return the same JPEG bytes (tested on real clips, GIF, WebM and MPEG-TS
included). ``-ss`` before ``-i`` makes the demuxer jump to a keyframe before the seek point, and
decoding starts there; a ``select`` filter keeps the target frames. The default ``auto`` plan is
keyframe-aware (``plan_frame_reads``): it reads the keyframe times once and groups targets into
runs, one seek per run, decoding on when the next target is in the same GOP (or only
``merge_gap_s`` past it) instead of paying another seek and re-decoding from a keyframe. Runs are
inputs of ffmpeg processes (up to 8 per process, so ffmpeg's start, about 0.07 s of CPU, is paid
per process, not per frame), 2 processes at a time. A seek costs the decode from the keyframe
before it, so seeking beats one ``select`` pass over the whole file when frames are few and
keyframes dense; a clip shorter than its first GOP is one run from the start, i.e. the select pass.
Figures: ``bench/bench_video.py`` (README block ``video_frames``).

Seeks are verified, because containers lie: a run that logs decoder errors after its seek (an
index that flags frames as keyframes which do not reset the decoder: the real cockatoo clip), or
whose first decoded frame comes after its first target (MPEG-TS has no index, and ffmpeg lands on
the next keyframe after the seek point), is redone from the file start.

Near-duplicate videos (``video_near_duplicates``): the rule is documented on the function.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import numpy as np

from curation.neardup import clusters, find_pairs
from curation.phash import DEFAULT_THRESHOLD, phash_many
from curation.records import KEEP, Verdict, drop

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
DEFAULT_SCENE_THRESHOLD = 0.3
DEFAULT_FRAME_SIZE = 448  # longer side of sampled frames (never upscaled); 16 x 28-px patches
DEFAULT_POSITIONS = 8  # frames per video for near-duplicate hashing
# ffmpeg messages that mean the file ends before its own index or header says it should.
_TRUNCATION_MARKERS = ("partial file", "ended prematurely")
# Containers whose duration comes from a header or an index, so a cut file still claims the whole
# duration; the others (MPEG-TS/PS, raw streams) measure it from the last timestamps in the file.
_INDEXED_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})
_PTS_TIME = re.compile(r"pts_time:\s*(-?[0-9.]+|nan|NAN)")
_SHOWINFO = re.compile(r"showinfo@([rl])(\d+) @ .*\bpts_time:\s*(-?[0-9.]+)")
_SCENE_SCORE = re.compile(r"lavfi\.scene_score=([0-9.]+)")


class VideoError(RuntimeError):
    """A video operation could not produce its output; ``reason`` is a snake_case quarantine reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------------------
# Probe
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoLimits:
    """Acceptance limits for ``probe``.

    ``max_duration_s`` (1 h): scene detection decodes the whole file once (1 h of 720p H.264 is
    about 4 min of one core, measured on testsrc2; real footage decodes slower), so very long
    inputs are refused up front rather than discovered late.
    ``min_side`` (64 px): as for images; the real QCIF test clips (176x144) pass.
    ``timeout_s``: wall-clock bound of each ffprobe/ffmpeg call of the probe (and of the keyframe
    listing a pipeline runs after it).
    """

    min_side: int = 64
    max_duration_s: float = 3600.0
    check_tail: bool = True
    tail_s: float = 1.0
    timeout_s: float = 120.0


DEFAULT_LIMITS = VideoLimits()


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe (and the tail check) learned; ``ok`` False means rejected with ``reason``."""

    ok: bool
    reason: str | None = None
    error: str | None = None
    format_name: str | None = None
    duration: float | None = None
    start_time: float = 0.0
    codec: str | None = None
    width: int | None = None  # stored pixel grid
    height: int | None = None
    rotation: int = 0  # clockwise degrees a player rotates by: 0, 90, 180 or 270
    display_width: int | None = None  # after rotation: what sampled frames show
    display_height: int | None = None
    fps: float | None = None
    fps_str: str | None = None  # the rational ffprobe reported, e.g. "30000/1001"
    n_frames: int | None = None  # None when the container does not say (WebM/Matroska)
    has_audio: bool = False
    audio_codec: str | None = None
    bit_rate: int | None = None
    size_bytes: int | None = None
    n_streams: int = 0

    @property
    def verdict(self) -> Verdict:
        """``keep, reason = info.verdict``."""
        return KEEP if self.ok else drop(self.reason or "unreadable_video")

    def as_record(self) -> dict:
        """Flat columns for a manifest row."""
        return {
            "video_ok": self.ok,
            "video_reason": self.reason,
            "video_error": self.error,
            "container": self.format_name,
            "duration_s": self.duration,
            "codec": self.codec,
            "width": self.display_width,
            "height": self.display_height,
            "rotation": self.rotation,
            "fps": self.fps,
            "n_frames": self.n_frames,
            "has_audio": self.has_audio,
            "bit_rate": self.bit_rate,
            "size_bytes": self.size_bytes,
        }


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _rate(value: str | None) -> float | None:
    """'30000/1001' -> 29.97; '0/0' or missing -> None."""
    if not value:
        return None
    num, _, den = value.partition("/")
    n, d = _float(num), _float(den or "1")
    if not n or not d or n <= 0 or d <= 0:
        return None
    return n / d


def _rotation(stream: dict) -> int:
    """Clockwise rotation a player applies, normalised to 0/90/180/270."""
    angle = None
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            # ffprobe prints the display matrix angle counterclockwise; players rotate by its inverse.
            angle = -(_float(sd["rotation"]) or 0.0)
            break
    if angle is None:
        angle = _float((stream.get("tags") or {}).get("rotate")) or 0.0  # legacy tag, clockwise
    return int(round(angle / 90.0)) * 90 % 360


def _tail(stderr: bytes | str, lines: int = 3) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    # ffmpeg prefixes messages with its context's address ("[mov,mp4,... @ 0x55b0...]"), which
    # differs in every process: drop it, so a re-run (or another worker) writes the same error.
    text = re.sub(r" @ 0x[0-9a-fA-F]+\]", "]", text)
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:500]


def _input(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    return "./" + p if p.startswith("-") else p  # never let a file name read as an option


def _kill_children_reading(path: str) -> None:
    """Kill this process's child processes whose command line names ``path`` (their children first)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if path in child.cmdline():
                for grandchild in child.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        grandchild.kill()
                child.kill()


def _probe_json(path: str, timeout: float | None) -> dict:
    """``ffmpeg.probe`` bounded in wall-clock time. ffmpeg-python 0.2 has no timeout and gives no handle
    on its ffprobe process, so the call runs in a thread; past ``timeout`` the ffprobe reading ``path``
    is killed and ``VideoError('timeout')`` raised: one file that makes ffprobe hang must not stall a
    worker."""
    if timeout is None:
        return ffmpeg.probe(path, cmd=FFPROBE)
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = ffmpeg.probe(path, cmd=FFPROBE)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="ffprobe", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        _kill_children_reading(path)
        worker.join(5)
        raise VideoError("timeout", f"ffprobe ran over {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _ffmpeg(args: list[str], timeout: float | None, level: str = "error") -> subprocess.CompletedProcess:
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-v", level, *args]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VideoError("timeout", f"ffmpeg ran over {timeout} s") from exc


def tail_check(path: str | os.PathLike, duration: float, tail_s: float = 1.0, timeout: float | None = 120.0,
               format_name: str | None = None) -> str | None:
    """None if the end of the file decodes, else a short error (see the module docstring)."""
    names = set((format_name or "").split(","))
    if "gif" in names:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b";":
                return "gif trailer (0x3B) missing: file cut short"
        return None
    if format_name is not None and not names & _INDEXED_FORMATS:
        return None
    start = max(0.0, duration - tail_s)
    res = _ffmpeg(["-ss", f"{start:.3f}", "-i", _input(path), "-map", "0:v:0", "-f", "framecrc", "-"], timeout,
                  level="warning")
    err = res.stderr.decode("utf-8", "replace")
    frames = sum(1 for ln in res.stdout.decode("ascii", "replace").splitlines() if ln and not ln.startswith("#"))
    if res.returncode != 0:
        return f"tail decode failed: {_tail(err)}"
    if frames == 0:
        return f"no frame in the last {tail_s:g} s: {_tail(err) or 'file ends early'}"
    low = err.lower()
    if any(m in low for m in _TRUNCATION_MARKERS):
        hit = [ln for ln in err.splitlines() if any(m in ln.lower() for m in _TRUNCATION_MARKERS)]
        return f"cut short: {hit[0].strip()[:300]}"
    return None


def probe(path: str | os.PathLike, limits: VideoLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Probe one video and judge it (see the module docstring for the checks and their order)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return VideoInfo(False, "unreadable_video", f"{type(exc).__name__}: {exc}")
    if size == 0:
        return VideoInfo(False, "zero_length", "empty file", size_bytes=0)
    try:
        data = _probe_json(_input(path), limits.timeout_s)
    except ffmpeg.Error as exc:
        return VideoInfo(False, "unreadable_video", _tail(exc.stderr or b"") or "ffprobe failed", size_bytes=size)
    except VideoError as exc:
        return VideoInfo(False, exc.reason, exc.detail, size_bytes=size)
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    base = dict(
        format_name=fmt.get("format_name"),
        has_audio=bool(audios),
        audio_codec=audios[0].get("codec_name") if audios else None,
        bit_rate=int(_float(fmt.get("bit_rate")) or 0) or None,
        size_bytes=size,
        n_streams=len(streams),
        start_time=_float(fmt.get("start_time")) or 0.0,
    )
    if not videos:
        kinds = ", ".join(sorted({str(s.get("codec_type")) + ("/attached_pic" if (s.get("disposition") or {}).get(
            "attached_pic") else "") for s in streams})) or "none"
        return VideoInfo(False, "no_video_stream", f"streams: {kinds}", duration=_float(fmt.get("duration")), **base)
    v = videos[0]
    fps_str = v.get("avg_frame_rate") if _rate(v.get("avg_frame_rate")) else v.get("r_frame_rate")
    fps = _rate(fps_str)
    n_frames = int(v["nb_frames"]) if str(v.get("nb_frames", "")).isdigit() else None
    duration = _float(fmt.get("duration")) or _float(v.get("duration"))
    if duration is None and n_frames and fps:
        duration = n_frames / fps
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    rotation = _rotation(v)
    dw, dh = (height, width) if rotation in (90, 270) else (width, height)
    info = VideoInfo(
        True, None, None, duration=duration, codec=v.get("codec_name"), width=width, height=height,
        rotation=rotation, display_width=dw, display_height=dh, fps=round(fps, 6) if fps else None,
        fps_str=fps_str, n_frames=n_frames, **base,
    )

    def reject(reason: str, error: str) -> VideoInfo:
        return VideoInfo(**{**info.__dict__, "ok": False, "reason": reason, "error": error})

    if duration is None or duration <= 0 or (n_frames is not None and n_frames < 2):
        return reject("zero_length", f"duration {duration}, frames {n_frames}")
    if duration > limits.max_duration_s:
        return reject("too_long", f"{duration:.1f} s > {limits.max_duration_s:g} s")
    if min(dw, dh) < limits.min_side:
        return reject("too_small", f"{dw}x{dh}, shorter side < {limits.min_side}")
    if limits.check_tail:
        try:
            err = tail_check(path, duration, limits.tail_s, limits.timeout_s, base["format_name"])
        except VideoError as exc:
            err = str(exc)
        if err:
            return reject("unreadable_video", err)
    return info


# ------------------------------------------------------------------------------------------------
# Scenes and clips
# ------------------------------------------------------------------------------------------------


def scene_scores(path: str | os.PathLike, timeout: float | None = 600.0) -> tuple[np.ndarray, np.ndarray]:
    """(pts_time, scene score) of every frame of the first video stream, in one decode pass.

    Raises ``VideoError('unreadable_video')`` when ffmpeg fails or decodes no frame.
    """
    res = _ffmpeg(["-i", _input(path), "-map", "0:v:0", "-an", "-sn", "-dn",
                   "-vf", "select='gte(scene,0)',metadata=print:file=-", "-f", "null", "-"], timeout)
    if res.returncode != 0:
        raise VideoError("unreadable_video", _tail(res.stderr))
    times: list[float] = []
    scores: list[float] = []
    t = math.nan
    for line in res.stdout.decode("utf-8", "replace").splitlines():
        m = _PTS_TIME.search(line)
        if m:
            t = float(m.group(1))
            continue
        m = _SCENE_SCORE.search(line)
        if m:
            times.append(t)
            scores.append(float(m.group(1)))
    if not times:
        raise VideoError("unreadable_video", "no frame decoded")
    return np.asarray(times, dtype=np.float64), np.asarray(scores, dtype=np.float64)


def detect_scenes(path: str | os.PathLike, threshold: float = DEFAULT_SCENE_THRESHOLD,
                  timeout: float | None = 600.0) -> list[float]:
    """Cut times (seconds, ascending): frames whose scene score is > ``threshold``."""
    times, scores = scene_scores(path, timeout)
    return [round(float(t), 6) for t in times[(scores > threshold) & np.isfinite(times)]]


def plan_clips(duration: float, cuts: Sequence[float], min_len: float = 2.0,
               max_len: float = 30.0) -> list[tuple[float, float]]:
    """Clips ``[(start, end), ...]`` covering ``[0, duration]`` without gaps, from shot cuts.

    Rule:
      1. Cuts outside (0, duration) are ignored; the rest are sorted and de-duplicated.
      2. Tiny shots merge into the shot before them: scanning left to right, a cut is dropped when it
         comes less than ``min_len`` after the last kept boundary (as PySceneDetect's min scene
         length does; a flash or a dissolve that fires on two neighbouring frames yields one cut).
         A final shot shorter than ``min_len`` merges into the one before it (the last kept cut is
         dropped).
      3. Long shots split into ``ceil(L / max_len)`` equal parts, so every part is <= ``max_len`` and
         > ``max_len / 2`` >= ``min_len``.
      4. A video shorter than ``min_len`` is one clip: the video itself is never dropped here.
    Times are rounded to milliseconds. Requires ``0 <= min_len <= max_len / 2``.
    """
    if not (0 <= min_len <= max_len / 2) or max_len <= 0:
        raise ValueError(f"need 0 <= min_len <= max_len / 2, got min_len={min_len}, max_len={max_len}")
    if duration <= 0:
        return []
    kept = [0.0]
    for c in sorted({float(c) for c in cuts if 0 < c < duration}):
        if c - kept[-1] >= min_len:
            kept.append(c)
    if len(kept) > 1 and duration - kept[-1] < min_len:
        kept.pop()
    kept.append(float(duration))
    out: list[tuple[float, float]] = []
    for a, b in zip(kept, kept[1:]):
        parts = max(1, math.ceil((b - a) / max_len - 1e-9))
        edges = [a + (b - a) * i / parts for i in range(parts + 1)]
        out.extend((round(x, 3), round(y, 3)) for x, y in zip(edges, edges[1:]))
    return out


def sample_times(start: float, end: float, n: int) -> list[float]:
    """``n`` times at the centres of ``n`` equal slices of [start, end]: (i + 0.5) / n.

    Centres keep away from both ends (fades, the last frame that may not exist at ``end``) and are
    the same relative positions for any duration, which is what ``video_near_duplicates`` aligns.
    """
    if n <= 0 or end <= start:
        return []
    return [round(start + (end - start) * (i + 0.5) / n, 3) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Keyframes and frame sampling
# ------------------------------------------------------------------------------------------------


def keyframe_times(path: str | os.PathLike, method: str = "packets", timeout: float | None = 600.0) -> list[float]:
    """Keyframe times (seconds from the file start, ascending) of the first video stream.

    ``packets``: ffprobe lists packets with their key flag; nothing is decoded (reads the file).
    ``decode``: ``-skip_frame nokey`` decodes keyframes only and lists those frames.
    """
    if method == "packets":
        entries, flag_col = "packet=pts_time,flags:format=start_time", True
        extra: list[str] = []
    elif method == "decode":
        entries, flag_col = "frame=pts_time:format=start_time", False
        extra = ["-skip_frame", "nokey"]
    else:
        raise ValueError(f"unknown method {method!r}")
    cmd = [FFPROBE, "-v", "error", *extra, "-select_streams", "v:0", "-show_entries", entries, "-of", "csv",
           _input(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VideoError("timeout", f"ffprobe ran over {timeout} s") from exc
    if res.returncode != 0:
        raise VideoError("unreadable_video", _tail(res.stderr))
    start = 0.0
    times: list[float] = []
    for line in res.stdout.decode("ascii", "replace").splitlines():
        parts = line.strip().split(",")
        if parts[0] == "format":
            start = _float(parts[1]) or 0.0
        elif parts[0] in ("packet", "frame") and len(parts) >= 2:
            t = _float(parts[1])
            if t is not None and (not flag_col or (len(parts) > 2 and "K" in parts[2])):
                times.append(t)
    return sorted({round(t - start, 6) for t in times})


def _scale_filter(size: int | None) -> list[str]:
    if not size:
        return []
    # Fit inside size x size, keep the aspect ratio, never upscale (commas escaped for the filter parser).
    return [f"scale=w=min({size}\\,iw):h=min({size}\\,ih):force_original_aspect_ratio=decrease"]


@dataclass(frozen=True)
class FrameRead:
    """One ffmpeg run of ``sample_frames``: seek to ``seek`` (None: decode from the file start) and
    decode on until the frame of the last of ``times`` (ascending)."""

    seek: float | None
    times: tuple[float, ...]
    decode_from: float = field(default=0.0, compare=False)  # the keyframe decoding starts at, if known


def plan_frame_reads(times: Sequence[float], keyframes: Sequence[float] | None, method: str = "auto",
                     merge_gap_s: float = 1.0) -> list[FrameRead]:
    """Group target times into ffmpeg runs.

    ``select``: one run from the file start for all times. ``seek``: one run per time, seeking to it.
    ``auto`` (keyframe-aware): times are taken in order; time b joins the run of the previous time
    a when decoding on from a costs no more than a fresh seek, i.e. when b's keyframe
    kf(b) (the last keyframe <= b) is at most ``merge_gap_s`` after a (a fresh run costs one more
    ffmpeg input and the decode from kf(b); ``merge_gap_s`` is that input in seconds of video:
    about 0.045 s of CPU, which decodes about 1 s of 720p H.264 on one core, hence 1.0). A run whose
    first time lies before the second keyframe decodes from the file start: a seek would land on
    the first keyframe anyway, and files whose only keyframe is the first (GIF) must be decoded
    from it. Without keyframes, ``auto`` is ``select``.
    """
    ts = sorted({float(t) for t in times})
    if not ts:
        return []
    if method == "select":
        return [FrameRead(None, tuple(ts))]
    if method == "seek":
        return [FrameRead(t, (t,)) for t in ts]
    if method != "auto":
        raise ValueError(f"unknown method {method!r}")
    kfs = np.asarray(sorted(keyframes or []), dtype=np.float64)
    if kfs.size < 2:
        return [FrameRead(None, tuple(ts))]

    def kf(t: float) -> float | None:
        i = int(np.searchsorted(kfs, t + 1e-6, side="right")) - 1
        return float(kfs[i]) if i >= 0 else None

    runs: list[list[float]] = []
    for t in ts:
        k = kf(t)
        if runs and (k is None or k - runs[-1][-1] <= merge_gap_s):
            runs[-1].append(t)
        else:
            runs.append([t])
    out = []
    for r in runs:
        k = kf(r[0])
        first_gop = k is None or k < kfs[1]
        out.append(FrameRead(None if first_gop else r[0], tuple(r), 0.0 if first_gop else float(k)))
    return out


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "[error]" in ln or "[fatal]" in ln]


def _read_batch(path: str, reads: Sequence[FrameRead], size: int | None, quality: int, threads: int,
                timeout: float | None, exact: bool = True,
                tail_s: float | None = 1.0) -> tuple[list[dict[float, bytes]], list[str]]:
    """Run several ``FrameRead``s in one ffmpeg process, one input (with its own seek) and one output
    per read: {target time: JPEG} per read (empty for a read whose seek overshot), and the
    process's error lines (decoder errors cannot be told apart by input).

    One process for several runs pays ffmpeg's start (about 0.07 s of CPU, mostly loading its
    libraries) once; the inputs decode one after the other in ffmpeg's single-threaded loop.
    """
    args: list[str] = []
    for r in reads:
        args += ["-threads", str(threads)]
        if not exact:
            args += ["-skip_frame", "noref"]  # decoder option: non-reference frames are never decoded
        if r.seek is not None:
            # without accurate seek the frames from the landing keyframe on reach the filters, so
            # the landing point can be checked instead of being trimmed away
            args += ["-noaccurate_seek", "-ss", f"{r.seek:.6f}"]
        if tail_s is not None:
            # Stop reading a little after the last target (its frame is the first at or after it):
            # the frame count usually ends the output first; this bounds the read when two targets
            # share a frame. Without accurate seek, -t counts from the landing keyframe.
            args += ["-t", f"{r.times[-1] - (r.decode_from if r.seek is not None else 0.0) + tail_s:.6f}"]
        args += ["-i", path]
    chains = []
    for i, r in enumerate(reads):
        base = r.seek or 0.0  # after -ss, timestamps in the filter count from the seek point
        # first frame at or after T: t >= T and the previous frame before T (prev_t is NaN on the
        # first frame, and gte(NaN, x) is 0); 0.5 us of slack absorbs the decimal rounding of T.
        expr = "+".join(f"gte(t\\,{t - base - 5e-7:.7f})*not(gte(prev_t\\,{t - base - 5e-7:.7f}))" for t in r.times)
        chain = ",".join([f"select={expr}", f"showinfo@r{i}", *_scale_filter(size)])
        if r.seek is None:
            chains.append(f"[{i}:v:0]{chain}[o{i}]")
        else:
            # a side branch logs the first decoded frame: where the seek landed
            chains.append(f"[{i}:v:0]split=2[s{i}][l{i}];[l{i}]select=eq(n\\,0),showinfo@l{i},nullsink;"
                          f"[s{i}]{chain}[o{i}]")
    args += ["-filter_complex", ";".join(chains)]
    with tempfile.TemporaryDirectory(prefix="frames_") as tmp:
        for i, r in enumerate(reads):
            args += ["-map", f"[o{i}]", "-vsync", "passthrough", "-frames:v", str(len(r.times)),
                     "-c:v", "mjpeg", "-q:v", str(quality), os.path.join(tmp, f"r{i}_%06d.jpg")]
        res = _ffmpeg(args, timeout, level="level+info")
        err = res.stderr.decode("utf-8", "replace")
        if res.returncode != 0:
            return [{} for _ in reads], _errors(err) or [_tail(err)]
        shown: dict[int, list[float]] = {i: [] for i in range(len(reads))}
        landed: dict[int, float] = {}
        for ln in err.splitlines():
            m = _SHOWINFO.search(ln)
            if m:
                i = int(m.group(2))
                t = (reads[i].seek or 0.0) + float(m.group(3))
                if m.group(1) == "r":
                    shown[i].append(t)
                else:
                    landed[i] = t
        out: list[dict[float, bytes]] = []
        for i, r in enumerate(reads):
            frames = [f.read_bytes() for f in sorted(Path(tmp).glob(f"r{i}_*.jpg"))]
            got: dict[float, bytes] = {}
            if len(frames) != len(shown[i]):
                pass  # cannot pair frames with times: the run serves nothing
            elif r.seek is not None and landed.get(i, math.inf) > r.times[0] + 1e-6:
                # Landed after the first target: the demuxer's seek overshot (MPEG-TS has no index
                # and lands on the next keyframe after the seek point); the frames before are lost,
                # so the run serves nothing and is redone.
                pass
            else:
                for t in r.times:
                    j = next((j for j, s in enumerate(shown[i]) if s >= t - 1e-6), None)
                    if j is not None:
                        got[t] = frames[j]
            out.append(got)
    return out, _errors(err)


def sample_frames(
    path: str | os.PathLike,
    times: Sequence[float],
    size: int | None = DEFAULT_FRAME_SIZE,
    method: str = "auto",
    keyframes: Sequence[float] | None = None,
    workers: int = 2,
    quality: int = 3,
    merge_gap_s: float = 1.0,
    exact: bool = True,
    max_inputs: int = 8,
    timeout: float | None = 300.0,
) -> list[bytes]:
    """JPEG bytes of the frame at each time (the first frame with pts >= t), longer side <= ``size``.

    ``method``: ``auto`` (keyframe-aware runs, see ``plan_frame_reads``; ``keyframes`` are read with
    ``keyframe_times`` when not given), ``seek`` (one seek per time) or ``select`` (one decode of the
    file). The runs are dealt round-robin to ``workers`` ffmpeg processes that run in parallel, at
    most ``max_inputs`` runs per process (each open input holds its decoder's reference frames).

    Runs that seeked and then logged decoder errors, or missed a target, are redone together in
    one run from the file start: a container can mark frames as keyframes that do not reset the
    decoder (the real cockatoo clip: its index flags I-frames at 3.8 s and 7.25 s whose successors
    reference older frames, and a seek there yields grey-green garbage). A process that logs an
    error cannot tell which of its inputs did, so all its seeked runs are redone. Raises
    ``VideoError('frame_sampling_failed')`` when a time has no frame (at or after the last frame).

    ``exact=False`` makes the decoder skip non-reference frames (``-skip_frame noref``): the frame
    returned is the first *reference* frame at or after T (1 frame later at most with x264's
    default B-pyramid, up to the number of consecutive B-frames without it; every frame of an
    intra-only or P-only stream is a reference), for about half the decode work on B-frame streams.
    """
    if not len(times):
        return []
    p = _input(path)
    if method == "auto" and keyframes is None:
        keyframes = keyframe_times(path, timeout=timeout)
    reads = plan_frame_reads(times, keyframes, method, merge_gap_s)
    n_batches = max(min(workers, len(reads)), math.ceil(len(reads) / max(1, max_inputs)), 1)
    batches = [reads[i::n_batches] for i in range(n_batches)]
    n_par = max(1, min(workers, n_batches))
    # a single run alone gets ffmpeg's automatic decoder threads; parallel processes share the cores
    threads = 0 if len(reads) == 1 else max(1, (os.cpu_count() or 1) // n_par)

    def run(batch: list[FrameRead]) -> list[tuple[FrameRead, dict[float, bytes], bool]]:
        parts, errors = _read_batch(p, batch, size, quality, threads, timeout, exact)
        return [(r, got, (r.seek is not None and bool(errors)) or len(got) < len(r.times))
                for r, got in zip(batch, parts)]

    if n_par == 1:
        results = [x for b in batches for x in run(b)]
    else:
        with ThreadPoolExecutor(max_workers=n_par) as pool:
            results = [x for part in pool.map(run, batches) for x in part]
    got: dict[float, bytes] = {}
    redo: list[float] = []
    for read, part, failed in results:
        if failed:
            redo.extend(read.times)
        else:
            got.update(part)
    if redo:
        # the container's keyframes cannot be trusted: one run from the start serves every failed target
        (part,), _ = _read_batch(p, [FrameRead(None, tuple(sorted(redo)))], size, quality, 0, timeout, exact,
                                 tail_s=None)
        got.update(part)
    out = []
    for t in times:
        frame = got.get(float(t))
        if frame is None:
            raise VideoError("frame_sampling_failed", f"no frame at t={float(t):.3f} s")
        out.append(frame)
    return out


# ------------------------------------------------------------------------------------------------
# Near-duplicate videos
# ------------------------------------------------------------------------------------------------


def video_phash(frames: Sequence[bytes]) -> np.ndarray:
    """64-bit pHash of each frame (``curation.phash.phash_many``) -> (n,) uint64.

    Raises ``VideoError('frame_hash_failed')`` if a frame does not decode.
    """
    hashes, errors = phash_many(frames)
    bad = [e for e in errors if e]
    if bad:
        raise VideoError("frame_hash_failed", bad[0])
    return hashes


@dataclass(frozen=True)
class VideoDupResult:
    """``pairs`` (p, 2) int64 i < j judged the same footage, ``matches`` (p,) aligned positions
    within k per pair, ``labels`` (n,) cluster label per video (smallest member index)."""

    pairs: np.ndarray
    matches: np.ndarray
    labels: np.ndarray


def video_near_duplicates(
    videos_hashes: np.ndarray | Sequence[Sequence[int]],
    k: int = DEFAULT_THRESHOLD,
    min_matches: int | None = None,
    valid: np.ndarray | None = None,
) -> VideoDupResult:
    """Same-footage pairs and clusters from aligned frame hashes.

    ``videos_hashes`` is (n, P): the pHash of each video's frames at the same P relative positions
    of its duration (``sample_times(0, duration, P)``). Rule: two videos are the same footage when
    at least ``min_matches`` of the P aligned frame pairs are within ``k`` bits (default: a strict
    majority, P // 2 + 1; 5 of 8). Relative positions make the rule independent of frame rate,
    resolution and encoding; a majority tolerates a few frames that an encoder smeared or that
    sit on a cut. It does not match a copy trimmed at one end (positions shift); nor can it tell
    apart videos that are the same still image or blank frames.

    Search: one ``curation.neardup.find_pairs`` per position (banded, never all pairs), matches
    counted per pair, clusters by ``curation.neardup.clusters``. ``valid`` (n, P) bool marks frames
    that exist; a missing frame never matches.
    """
    h = np.asarray(videos_hashes, dtype=np.uint64)
    if h.ndim != 2:
        raise ValueError(f"expected an (n, P) array of hashes, got shape {h.shape}")
    n, n_pos = h.shape
    need = n_pos // 2 + 1 if min_matches is None else int(min_matches)
    if not 1 <= need <= max(1, n_pos):
        raise ValueError(f"min_matches must be in 1..{n_pos}")
    ok = np.ones((n, n_pos), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    keys = []
    for p in range(n_pos):
        rows = np.flatnonzero(ok[:, p])
        if rows.size < 2:
            continue
        pp = rows[find_pairs(h[rows, p], k)]
        keys.append(pp[:, 0] * n + pp[:, 1])
    if keys:
        uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    else:
        uniq = counts = np.empty(0, dtype=np.int64)
    sel = counts >= need
    pairs = np.stack([uniq[sel] // n, uniq[sel] % n], axis=1).astype(np.int64) if n else np.empty((0, 2), np.int64)
    return VideoDupResult(pairs.reshape(-1, 2), counts[sel].astype(np.int64), clusters(n, pairs))


def representative_key(row: dict) -> tuple:
    """Same-footage representative rule, smallest wins: largest pixel area, then highest bit rate
    (the least compressed encode), then smallest id, partition and source (deterministic)."""
    return (-(row["width"] or 0) * (row["height"] or 0), -(row["bit_rate"] or 0), row["id"], row["partition"], row["source"])


def footage_cluster(rows: Sequence[dict], k: int = DEFAULT_THRESHOLD) -> list[dict]:
    """One same-footage cluster (rows with ``hashes``): each row plus ``cluster`` (the representative's
    id), ``cluster_size``, ``representative``, ``dup_of`` and ``matches`` (aligned frames within k of
    the representative's)."""
    rep = min(rows, key=representative_key)
    rep_h = np.asarray(rep["hashes"], dtype=np.uint64)
    out = []
    for r in rows:
        same = int(np.sum(np.bitwise_count(np.asarray(r["hashes"], dtype=np.uint64) ^ rep_h) <= k))
        out.append(dict(r, cluster=rep["id"], cluster_size=len(rows), representative=r is rep,
                        dup_of=None if r is rep else rep["id"], matches=same))
    return out


def cluster_videos(rows: Sequence[dict], k: int = DEFAULT_THRESHOLD, min_matches: int | None = None) -> list[dict]:
    """In-memory same-footage clustering of hashed rows (``video_near_duplicates`` over all of
    them, then ``footage_cluster`` per cluster), sorted by (partition, id, source): the small-corpus
    path and the oracle of the distributed one in ``pipelines.video``."""
    rows = sorted(rows, key=lambda r: (r["partition"], r["id"], r["source"]))
    if not rows:
        return []
    res = video_near_duplicates(np.asarray([r["hashes"] for r in rows], dtype=np.uint64), k=k, min_matches=min_matches)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(res.labels.tolist()):
        groups.setdefault(label, []).append(i)
    out = [r for members in groups.values() for r in footage_cluster([rows[i] for i in members], k)]
    return sorted(out, key=lambda r: (r["partition"], r["id"], r["source"]))
