"""CLIP scores from a tiny local open_clip model: the same pair gets the same score in any batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curation import clip_score, imaging
from curation.models import build_tiny_clip


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> clip_score.ClipScorer:
    path = tmp_path_factory.mktemp("clip") / "clip-tiny"
    build_tiny_clip(str(path))
    return clip_score.ClipScorer(f"local-dir:{path}", None, batch_size=8)


def test_score_does_not_depend_on_the_batch(scorer: clip_score.ClipScorer, shared_data: Path) -> None:
    coco = shared_data / "image_caption/coco_mini"
    rows = [json.loads(x) for x in (coco / "captions.jsonl").read_text().splitlines()][:11]
    images = [imaging.decode_image((coco / r["image"]).read_bytes(), imaging.ImageLimits())[0] for r in rows]
    texts = [r["captions"][0] for r in rows]
    together = scorer.score(images, texts)  # one full batch of 8, then 3 padded to 8
    alone = np.array([scorer.score([i], [t])[0] for i, t in zip(images, texts)], dtype=np.float32)
    middle = scorer.score(images[2:7], texts[2:7])
    assert together.dtype == np.float32 and together.shape == (11,)
    assert together.tobytes() == alone.tobytes()  # bit for bit, whatever the batch held
    assert middle.tobytes() == together[2:7].tobytes()
    assert np.all(np.abs(together) <= 1.0 + 1e-6)


def test_mismatched_inputs_are_refused(scorer: clip_score.ClipScorer) -> None:
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer.score([None, None], ["x"])  # type: ignore[list-item]
