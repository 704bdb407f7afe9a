"""Timestamped video captions: the VLM prompt, validation of its events, temporal-grounding samples.

The VLM sees a clip as frames, each preceded by its timestamp from the clip start, and answers in
a fixed format (``USER_TEMPLATE``)::

    Caption: <one dense paragraph about the whole clip>
    Events:
    [00:00, 00:04] a man walks into the shop
    [00:04, 00:09] he talks to the cashier

Timestamps are ``mm:ss`` or ``hh:mm:ss`` (an optional fraction such as ``00:03.5`` is accepted),
always relative to the clip start. ``parse_events`` validates the event list; the first failing
check, in this order, gives the reason:

| reason | rule |
|---|---|
| ``no_events`` | no event line (``[t1, t2] description``; list bullets or numbers before it are fine) |
| ``bad_timestamp`` | a bracket on an event line that is not two timestamps (``[1:75, 2:00]``, ``[Music]``, plain seconds), or start >= end |
| ``out_of_range`` | start >= clip duration, or end > the duration rounded up to a whole second (whole-second timestamps must be able to reach the end of a 9.6 s clip: ``00:10``) |
| ``unordered`` | an event starts before the previous one (``EventFormat.ordered``) |
| ``overlapping`` | an event starts before the previous one ends (unless ``EventFormat.allow_overlap``; touching, ``[.., 00:04] [00:04, ..]``, is fine) |

Lines of the ``Events:`` section without a description are ignored; without an ``Events:`` header
every line is read. Times are kept as the model wrote them (no clamping), so the grounding answer
is exactly the validated interval.

Temporal grounding: each valid event becomes ``{"video", "query", "answer"}`` with the answer as
``[mm:ss, mm:ss]``; ``parse_interval`` reads such an answer (or a model's output: the last
bracketed pair, timestamps or plain seconds) and ``temporal_iou`` scores it, which is the
temporal-IoU reward of the MORL stage (``temporal_iou_reward``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_PROMPT = "You are a careful video annotator. You describe only what the frames show."
USER_TEMPLATE = (
    "The images above are {n} frames of one video clip, in order; the text before each frame is its "
    "time from the start of the clip. The clip lasts {duration} ({seconds:.1f} s).\n"
    "1. Write a dense caption of the whole clip: the setting, the people, animals and objects, what "
    "they do, how the camera moves, and any text on screen.\n"
    "2. List the events of the clip in time order, one per line, as [mm:ss, mm:ss] followed by a short "
    "description. Events must not overlap, and every time must lie between 00:00 and {duration}.\n"
    "Answer exactly in this format:\n"
    "Caption: <caption>\n"
    "Events:\n"
    "[mm:ss, mm:ss] <event>"
)

_TS = r"\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"
_NUM = r"\d+(?:\.\d+)?"
_EVENT_LINE = re.compile(r"^\s*(?:[-*\u2022]\s*|\d+[.)]\s*)?\[([^\]]*)\]\s*[:\-\u2013\u2014]?\s*(.*?)\s*$")
_PAIR = re.compile(r"^\s*(\S+?)\s*(?:,|-|\u2013|\u2014|to)\s*(\S+?)\s*$")
_INTERVAL = re.compile(
    rf"\[\s*({_TS}|{_NUM})\s*s?\s*(?:,|-|\u2013|\u2014|to)\s*({_TS}|{_NUM})\s*s?\s*\]"
)
_CAPTION = re.compile(r"^\s*(?:dense\s+)?caption\s*:\s*(.*)$", re.I)
_EVENTS_HEADER = re.compile(r"^\s*events?\s*:\s*$", re.I)


@dataclass(frozen=True)
class EventFormat:
    """What the event list must satisfy besides parsing and range (see the module docstring)."""

    ordered: bool = True
    allow_overlap: bool = False


DEFAULT_FORMAT = EventFormat()


@dataclass(frozen=True)
class Event:
    start: float
    end: float
    description: str

    @property
    def interval(self) -> str:
        return format_interval(self.start, self.end)

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "timestamp": self.interval, "description": self.description}


# ------------------------------------------------------------------------------------------------
# Timestamps
# ------------------------------------------------------------------------------------------------


def parse_timestamp(text: str) -> float | None:
    """'mm:ss', 'm:ss', 'hh:mm:ss' (optional '.fraction') -> seconds; None if malformed.

    Seconds (and minutes when hours are given) must be below 60; minutes alone may exceed 59
    ('75:00' is 75 minutes).
    """
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?(\.\d+)?\s*", text)
    if not m:
        return None
    a, b, c, frac = m.groups()
    if c is None:
        minutes, seconds, hours = int(a), int(b), 0
    else:
        hours, minutes, seconds = int(a), int(b), int(c)
        if minutes >= 60:
            return None
    if seconds >= 60:
        return None
    return hours * 3600 + minutes * 60 + seconds + (float(frac) if frac else 0.0)


def format_timestamp(seconds: float, decimals: int = 0) -> str:
    """Seconds -> 'mm:ss' ('hh:mm:ss' from one hour), rounded to ``decimals`` places of a second."""
    if seconds < 0:
        raise ValueError("negative timestamp")
    scale = 10**decimals
    total = round(seconds * scale)
    whole, part = divmod(total, scale)
    h, rest = divmod(whole, 3600)
    mm, ss = divmod(rest, 60)
    out = f"{h:02d}:{mm:02d}:{ss:02d}" if h else f"{mm:02d}:{ss:02d}"
    return out + (f".{part:0{decimals}d}" if decimals else "")


def format_interval(start: float, end: float) -> str:
    """'[mm:ss, mm:ss]'."""
    return f"[{format_timestamp(start)}, {format_timestamp(end)}]"


# ------------------------------------------------------------------------------------------------
# Prompt
# ------------------------------------------------------------------------------------------------


def frame_parts(times: Sequence[float], frames: Sequence[bytes] | None = None) -> list[dict]:
    """Chat content parts: each frame's timestamp, then the frame (its bytes, or a bare ``{"type":
    "image"}`` placeholder when ``frames`` is None, as shards name images by field). Labels get one
    decimal when frames are less than a second apart (short clips), so no two labels read the same."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    decimals = 1 if gaps and min(gaps) < 1.0 else 0
    parts: list[dict] = []
    for i, t in enumerate(times):
        parts.append({"type": "text", "text": format_timestamp(max(0.0, t), decimals)})
        parts.append({"type": "image", "image": frames[i]} if frames is not None else {"type": "image"})
    return parts


def caption_messages(frames: Sequence[bytes], times: Sequence[float], clip_duration: float) -> list[dict]:
    """Chat messages (OpenAI/vLLM format, as ``curation.generation`` takes them) for one clip.

    ``times`` are the frames' times from the clip start. Each frame is preceded by its timestamp
    (``frame_parts``).
    """
    if len(frames) != len(times) or not frames:
        raise ValueError("need one time per frame, and at least one frame")
    content = frame_parts(times, frames)
    end = format_timestamp(math.ceil(clip_duration - 1e-9))
    content.append({"type": "text", "text": USER_TEMPLATE.format(n=len(frames), duration=end, seconds=clip_duration)})
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


# ------------------------------------------------------------------------------------------------
# Parsing and validation
# ------------------------------------------------------------------------------------------------


def parse_caption(text: str) -> str:
    """The text after 'Caption:' up to the 'Events:' header (or the first event line); '' if none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _CAPTION.match(line)
        if m:
            parts = [m.group(1).strip()]
            for nxt in lines[i + 1 :]:
                if _EVENTS_HEADER.match(nxt) or _EVENT_LINE.match(nxt):
                    break
                parts.append(nxt.strip())
            return " ".join(p for p in parts if p).strip()
    return ""


def _event_lines(text: str) -> list[str]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _EVENTS_HEADER.match(line):
            return lines[i + 1 :]
    return lines


def parse_events(
    text: str, clip_duration: float, fmt: EventFormat = DEFAULT_FORMAT
) -> tuple[list[Event], str | None]:
    """The validated events of a model answer and None, or ([], reason) (module docstring)."""
    raw: list[tuple[str, str]] = []
    for line in _event_lines(text):
        m = _EVENT_LINE.match(line)
        if m and m.group(2):
            raw.append((m.group(1), m.group(2)))
    if not raw:
        return [], "no_events"
    events: list[Event] = []
    for inner, desc in raw:
        pair = _PAIR.match(inner)
        start = parse_timestamp(pair.group(1)) if pair else None
        end = parse_timestamp(pair.group(2)) if pair else None
        if start is None or end is None or start >= end:
            return [], "bad_timestamp"
        events.append(Event(start, end, desc))
    limit = math.ceil(clip_duration - 1e-9) + 1e-6
    if any(e.start >= clip_duration or e.end > limit for e in events):
        return [], "out_of_range"
    if fmt.ordered and any(b.start < a.start for a, b in zip(events, events[1:])):
        return [], "unordered"
    if not fmt.allow_overlap:
        ordered = sorted(events, key=lambda e: (e.start, e.end))
        if any(b.start < a.end for a, b in zip(ordered, ordered[1:])):
            return [], "overlapping"
    return events, None


@dataclass(frozen=True)
class CaptionCheck:
    """Outcome of one generated answer: caption and events when ``reason`` is None."""

    caption: str
    events: list[Event]
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_response(
    text: str | None,
    clip_duration: float,
    finish_reason: str | None = None,
    error: str | None = None,
    fmt: EventFormat = DEFAULT_FORMAT,
) -> CaptionCheck:
    """Judge one answer: ``generation_error``, ``truncated`` (stopped at max_tokens), ``no_caption``,
    then the ``parse_events`` reasons. A pipeline retries rejected clips (new seed) or drops them."""
    if error:
        return CaptionCheck("", [], "generation_error")
    if finish_reason == "length":
        return CaptionCheck("", [], "truncated")
    caption = parse_caption(text or "")
    if not caption:
        return CaptionCheck("", [], "no_caption")
    events, reason = parse_events(text or "", clip_duration, fmt)
    return CaptionCheck(caption, events, reason)


# ------------------------------------------------------------------------------------------------
# Temporal grounding
# ------------------------------------------------------------------------------------------------


def temporal_grounding_samples(video_id: str, events: Sequence[Event]) -> list[dict]:
    """One sample per event: ``{"video": id, "query": description, "answer": "[mm:ss, mm:ss]"}``."""
    return [{"video": video_id, "query": e.description, "answer": e.interval} for e in events]


def _seconds(token: str) -> float | None:
    return parse_timestamp(token) if ":" in token else float(token)


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """The last bracketed pair of times in ``text`` as (start, end) seconds, or None.

    Times are timestamps ('[00:05, 00:09]', '[1:02:03, 1:02:09]') or plain seconds ('[5, 9.5]',
    '[5.0s - 9.5s]'), since grounding models answer in either; the last pair wins, so reasoning
    before a final answer does not count. The pair is returned as written (start may exceed end).
    """
    if not text:
        return None
    for m in reversed(list(_INTERVAL.finditer(text))):
        a, b = _seconds(m.group(1)), _seconds(m.group(2))
        if a is not None and b is not None:
            return a, b
    return None


def temporal_iou(pred: tuple[float, float] | None, gold: tuple[float, float]) -> float:
    """Intersection over union of two intervals; 0.0 for a missing or empty/inverted prediction."""
    gs, ge = gold
    if not ge > gs:
        raise ValueError(f"gold interval must have start < end, got {gold}")
    if pred is None:
        return 0.0
    ps, pe = pred
    if not pe > ps:
        return 0.0
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    return inter / ((pe - ps) + (ge - gs) - inter)


def temporal_iou_reward(completion: str, answer: str) -> float:
    """Reward in [0, 1]: IoU of the interval in a completion against a sample's ``answer``."""
    gold = parse_interval(answer)
    if gold is None:
        raise ValueError(f"answer holds no interval: {answer!r}")
    return temporal_iou(parse_interval(completion), gold)
