"""Timestamped event captions: timestamp parsing, event validation reasons, grounding samples, temporal IoU."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from curation import generation
from curation.video import sample_frames, sample_times
from curation.video_captions import (
    Event,
    EventFormat,
    caption_messages,
    check_response,
    format_interval,
    format_timestamp,
    parse_caption,
    parse_events,
    parse_interval,
    parse_timestamp,
    temporal_grounding_samples,
    temporal_iou,
    temporal_iou_reward,
)

GOOD = """Caption: A man in a bowler hat walks into a shop,
looks around and sits down at a table.
Events:
[00:00, 00:04] a man walks into the shop
[00:04, 00:10] he sits down at a table"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:05", 5.0), ("0:05", 5.0), ("12:34", 754.0), ("75:00", 4500.0), ("1:02:03", 3723.0),
     ("00:03.5", 3.5), (" 00:07 ", 7.0), ("00:60", None), ("1:60:00", None), ("5", None), ("5.0", None),
     ("a:bc", None), ("00:5", None), ("123:00", None), ("", None)],
)
def test_parse_timestamp(text: str, seconds: float | None) -> None:
    assert parse_timestamp(text) == seconds


def test_format_timestamp() -> None:
    assert [format_timestamp(s) for s in (0, 5, 59.6, 754, 3723)] == ["00:00", "00:05", "01:00", "12:34", "01:02:03"]
    assert format_timestamp(3.26, decimals=1) == "00:03.3"
    assert format_interval(4, 9.64) == "[00:04, 00:10]"
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_parse_events_valid() -> None:
    events, reason = parse_events(GOOD, 9.64)
    assert reason is None
    assert events == [Event(0.0, 4.0, "a man walks into the shop"), Event(4.0, 10.0, "he sits down at a table")]
    assert events[1].as_dict() == {"start": 4.0, "end": 10.0, "timestamp": "[00:04, 00:10]",
                                   "description": "he sits down at a table"}
    assert parse_caption(GOOD) == "A man in a bowler hat walks into a shop, looks around and sits down at a table."


@pytest.mark.parametrize(
    ("text", "duration", "fmt", "expected"),
    [
        # list markers, '-' / 'to' separators and a colon after the bracket are all fine
        ("- [00:00, 00:03] a\n2. [00:03 - 00:05]: b\n* [00:05 to 00:09] c", 9.64, None, (3, None)),
        ("Events:\n[00:01, 00:03] a\n[00:03, 00:04]\n", 9.64, None, (1, None)),  # no description: ignored
        ("Caption: a shop.", 9.64, None, (0, "no_events")),
        ("Caption: a shop.\nEvents:\n", 9.64, None, (0, "no_events")),
        ("[00:00, 00:75] a", 9.64, None, (0, "bad_timestamp")),
        ("[Music] plays", 9.64, None, (0, "bad_timestamp")),
        ("[5, 9] seconds are not timestamps", 9.64, None, (0, "bad_timestamp")),
        ("[00:05, 00:03] backwards", 9.64, None, (0, "bad_timestamp")),
        ("[00:04, 00:04] empty", 9.64, None, (0, "bad_timestamp")),
        ("[00:08, 00:11] past the end", 9.64, None, (0, "out_of_range")),
        ("[00:10, 00:10.5] starts at the end", 9.64, None, (0, "out_of_range")),
        ("[00:08, 00:10] up to the end", 10.0, None, (1, None)),
        ("[00:08, 00:11] one second past a 10 s clip", 10.0, None, (0, "out_of_range")),
        ("[00:04, 00:06] b\n[00:00, 00:03] a", 9.64, None, (0, "unordered")),
        ("[00:04, 00:06] b\n[00:00, 00:03] a", 9.64, EventFormat(ordered=False), (2, None)),
        ("[00:00, 00:05] a\n[00:03, 00:07] b", 9.64, None, (0, "overlapping")),
        ("[00:00, 00:05] a\n[00:03, 00:07] b", 9.64, EventFormat(allow_overlap=True), (2, None)),
        ("[00:04, 00:08] b\n[00:00, 00:05] a", 9.64, EventFormat(ordered=False), (0, "overlapping")),
        ("[00:00, 00:04] a\n[00:04, 00:08] b", 9.64, None, (2, None)),  # touching is not overlapping
        # precedence: a parse error anywhere wins over range and order problems
        ("[00:08, 00:30] a\n[00:00, 00:99] b", 9.64, None, (0, "bad_timestamp")),
        ("[00:05, 00:30] a\n[00:00, 00:02] b", 9.64, None, (0, "out_of_range")),
        ("[01:00:00, 01:05:00] a\n[01:05:00, 01:06:40] b", 4000.0, None, (2, None)),
    ],
)
def test_parse_events_reasons(text: str, duration: float, fmt: EventFormat | None, expected) -> None:
    events, reason = parse_events(text, duration, fmt or EventFormat())
    assert (len(events), reason) == expected


@pytest.mark.parametrize(
    ("text", "finish", "error", "reason"),
    [
        (GOOD, "stop", None, None),
        (GOOD, "stop", "HTTP 503", "generation_error"),
        (GOOD, "length", None, "truncated"),
        ("Events:\n[00:00, 00:04] a man", "stop", None, "no_caption"),
        ("Caption: a shop.\nEvents:\n[00:00, 00:30] a man", "stop", None, "out_of_range"),
        (None, "stop", None, "no_caption"),
    ],
)
def test_check_response(text, finish, error, reason) -> None:
    res = check_response(text, 9.64, finish, error)
    assert res.reason == reason and res.ok is (reason is None)
    assert len(res.events) == (2 if reason is None else 0)


def test_grounding_samples_round_trip() -> None:
    events, _ = parse_events(GOOD, 9.64)
    samples = temporal_grounding_samples("clip-0001", events)
    assert samples == [
        {"video": "clip-0001", "query": "a man walks into the shop", "answer": "[00:00, 00:04]"},
        {"video": "clip-0001", "query": "he sits down at a table", "answer": "[00:04, 00:10]"},
    ]
    assert [parse_interval(s["answer"]) for s in samples] == [(e.start, e.end) for e in events]
    assert [temporal_iou_reward(s["answer"], s["answer"]) for s in samples] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("[00:05, 00:09]", (5.0, 9.0)),
        ("The event happens at [5.0s - 9.5s].", (5.0, 9.5)),
        ("[5, 9]", (5.0, 9.0)),
        ("first [00:01, 00:02], then on reflection the answer is [00:03, 00:04]", (3.0, 4.0)),
        ("[1:02:03, 1:02:09]", (3723.0, 3729.0)),
        ("[00:09, 00:05]", (9.0, 5.0)),  # returned as written; temporal_iou scores it 0
        ("[00:75, 00:80]", None),
        ("from 00:05 to 00:09", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_interval(text: str | None, interval) -> None:
    assert parse_interval(text) == interval


@pytest.mark.parametrize(
    ("pred", "gold", "iou"),
    [
        ((0.0, 10.0), (0.0, 10.0), 1.0),
        ((0.0, 10.0), (5.0, 15.0), 1 / 3),
        ((2.0, 4.0), (0.0, 10.0), 0.2),
        ((0.0, 4.0), (4.0, 8.0), 0.0),  # touching
        ((0.0, 1.0), (5.0, 8.0), 0.0),
        ((9.0, 5.0), (4.0, 8.0), 0.0),  # inverted prediction
        ((5.0, 5.0), (4.0, 8.0), 0.0),  # empty prediction
        (None, (4.0, 8.0), 0.0),
    ],
)
def test_temporal_iou(pred, gold, iou) -> None:
    assert temporal_iou(pred, gold) == pytest.approx(iou, abs=1e-12)


def test_temporal_iou_reward() -> None:
    assert temporal_iou_reward("<think>...</think> It is at [00:02, 00:06].", "[00:04, 00:08]") == pytest.approx(1 / 3)
    assert temporal_iou_reward("no idea", "[00:04, 00:08]") == 0.0
    with pytest.raises(ValueError):
        temporal_iou((1.0, 2.0), (3.0, 3.0))
    with pytest.raises(ValueError):
        temporal_iou_reward("[00:01, 00:02]", "no interval")


def test_caption_messages_on_real_clip(shared_data: Path) -> None:
    """Frames of the real Chaplin clip, each after its timestamp label; the engines' message resolver
    takes the messages as they are."""
    path = shared_data / "video/clips/moviepy__chaplin.mp4"
    times = sample_times(0, 9.64, 4)
    frames = sample_frames(path, times)
    msgs = caption_messages(frames, times, 9.64)
    assert [m["role"] for m in msgs] == ["system", "user"]
    content = msgs[1]["content"]
    assert [c["type"] for c in content] == ["text", "image"] * 4 + ["text"]
    assert [c["text"] for c in content[:-1:2]] == ["00:01", "00:04", "00:06", "00:08"]
    assert all(Image.open(io.BytesIO(c["image"])).format == "JPEG" for c in content[1::2])
    assert "lasts 00:10 (9.6 s)" in content[-1]["text"] and "[mm:ss, mm:ss]" in content[-1]["text"]
    resolved = generation.resolve_messages(generation.GenerationRequest(messages=msgs))
    assert [c["image"] for c in resolved[1]["content"][1::2]] == frames
    # frames less than a second apart get tenths, so labels stay distinct
    short = caption_messages([b"a", b"b", b"c"], [0.25, 0.75, 1.25], 1.5)[1]["content"]
    assert [c["text"] for c in short[:-1:2]] == ["00:00.2", "00:00.8", "00:01.2"]
    with pytest.raises(ValueError):
        caption_messages([b"a"], [0.0, 1.0], 2.0)
