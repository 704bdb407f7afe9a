"""Re-caption acceptance: exact reasons, the consistency measure, the prompt shape."""

from __future__ import annotations

import pytest

from curation import recaption


@pytest.mark.parametrize(
    ("original", "new", "finish", "error", "expected"),
    [
        ("A frog.", "A green frog sitting on a lily pad in a pond.", "stop", None, (True, None)),
        ("A frog.", "Caption: \"A green frog sitting on a lily pad.\"", "stop", None, (True, None)),
        ("A frog.", "", "stop", "HTTP 503", (False, "generation_error")),
        ("A frog.", "A green frog sitting on a", "length", None, (False, "truncated")),
        ("A frog.", "   ", "stop", None, (False, "empty")),
        ("A frog.", "Frog.", "stop", None, (False, "too_short")),
        ("A frog.", " ".join(["word"] * 130), "stop", None, (False, "too_long")),
        ("A frog.", "A red bicycle leaning against a brick wall at sunset.", "stop", None, (False, "inconsistent")),
        ("A vulture.", "vulture vulture vulture vulture vulture vulture vulture vulture vulture vulture vulture vulture",
         "stop", None, (False, "word_repetition")),
    ],
)
def test_check_recaption_reasons(original, new, finish, error, expected) -> None:
    assert tuple(recaption.check_recaption(original, new, finish, error=error)) == expected


def test_consistency_measure() -> None:
    assert recaption.content_words("The cats are on the mats.") == {"cat", "mat"}
    assert recaption.consistency("Two cats on a mat.", "A mat with two sleeping cats.") == 1.0
    assert recaption.consistency("Two cats on a mat.", "A dog on a mat.") == pytest.approx(1 / 3)  # {two, cat, mat}
    assert recaption.consistency("A.", "Anything at all.") is None


def test_messages_carry_image_and_original_caption() -> None:
    msgs = recaption.messages_for("  A frog. ", b"\x89PNG")
    assert [m["role"] for m in msgs] == ["system", "user"]
    parts = msgs[1]["content"]
    assert parts[0] == {"type": "image", "image": b"\x89PNG"}
    assert '"A frog."' in parts[1]["text"]
