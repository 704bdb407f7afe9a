"""CLIP score: cosine similarity of open_clip image and text embeddings, batched.

``ClipScorer(model, pretrained)`` takes what ``open_clip.create_model_and_transforms`` takes: an
architecture name plus a checkpoint (``'ViT-L-14', '/ckpt/open_clip_pytorch_model.bin'``), or a
``'local-dir:/path'`` folder, or ``'hf-hub:org/repo'`` where a hub is reachable. Filtering follows
DataComp: an absolute threshold (model-specific; DataComp's ViT-L/14 baseline keeps scores >= 0.3),
or keep the top fraction by score (``keep_top_fraction``; DataComp's best baseline keeps 30%).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.records import KEEP, Verdict, drop


@dataclass(frozen=True)
class ClipFilterConfig:
    """Either an absolute ``min_score`` or a ``keep_top_fraction`` (or neither: score only)."""

    min_score: float | None = None
    keep_top_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and self.keep_top_fraction is not None:
            raise ValueError("set min_score or keep_top_fraction, not both")
        if self.keep_top_fraction is not None and not 0.0 < self.keep_top_fraction <= 1.0:
            raise ValueError(f"keep_top_fraction must lie in (0, 1], got {self.keep_top_fraction}")


def threshold_for(scores: np.ndarray, config: ClipFilterConfig) -> float | None:
    """The score a sample needs to be kept (None: keep everything).

    For ``keep_top_fraction`` it is the score of the last kept sample when scores are sorted
    descending, so exactly ``ceil(fraction * n)`` samples pass when scores are distinct.
    """
    if config.min_score is not None:
        return float(config.min_score)
    if config.keep_top_fraction is None or len(scores) == 0:
        return None
    n_keep = int(np.ceil(config.keep_top_fraction * len(scores)))
    return float(np.sort(np.asarray(scores, dtype=np.float64))[::-1][n_keep - 1])


# ----------------------------------------------------------------------------------------------
# The top-fraction threshold in two small passes (what a distributed runner computes)
#
# ``threshold_for`` sorts every score of a drop: fine in a notebook, a gather at corpus scale. The
# same value comes exactly from (1) a histogram of monotone score buckets (a combiner, small: at most
# 2^SCORE_BUCKET_BITS buckets, a few thousand for real CLIP scores), which locates the bucket holding
# the n_keep-th largest score, and (2) the distinct values inside that one bucket (a second combiner,
# bounded by the float64 values that share 20 leading bits of the order key), where the order
# statistic is read off. No approximation error: the result equals ``threshold_for`` bit for bit.

SCORE_BUCKET_BITS = 20


def score_bucket(score: float) -> int:
    """Monotone bucket of a score: the top SCORE_BUCKET_BITS bits of its float64 total-order key
    (a < b implies bucket(a) <= bucket(b))."""
    (u,) = struct.unpack("<Q", struct.pack("<d", float(score)))
    u = (~u & 0xFFFF_FFFF_FFFF_FFFF) if u >> 63 else (u | (1 << 63))
    return u >> (64 - SCORE_BUCKET_BITS)


def keep_count(n: int, config: ClipFilterConfig) -> int | None:
    """How many of ``n`` scores the top-fraction rule keeps (None: no rank rule applies)."""
    if config.min_score is not None or config.keep_top_fraction is None or n == 0:
        return None
    return int(math.ceil(config.keep_top_fraction * n))


def boundary_bucket(histogram: Mapping[int, int], n_keep: int) -> tuple[int, int]:
    """(bucket that holds the ``n_keep``-th largest score, that score's 1-based rank from the top of
    the bucket)."""
    seen = 0
    for bucket in sorted(histogram, reverse=True):
        if seen + histogram[bucket] >= n_keep:
            return bucket, n_keep - seen
        seen += histogram[bucket]
    raise ValueError(f"n_keep {n_keep} exceeds the {seen} scores of the histogram")


def kth_largest(value_counts: Mapping[float, int], rank: int) -> float:
    """The ``rank``-th largest value (1-based) of a multiset given as value -> count."""
    seen = 0
    for value in sorted(value_counts, reverse=True):
        seen += value_counts[value]
        if seen >= rank:
            return float(value)
    raise ValueError(f"rank {rank} exceeds the {seen} values given")


def clip_verdict(score: float, threshold: float | None) -> Verdict:
    return KEEP if threshold is None or score >= threshold else drop("clip_score_below_threshold")


class ClipScorer:
    """Loads an open_clip model once and scores (image, text) batches."""

    def __init__(self, model: str, pretrained: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        import open_clip
        import torch

        self._torch = torch
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=pretrained, device=device, load_weights=True
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity per (image, text) pair, float32, in input order.

        Every forward pass has exactly ``batch_size`` rows (a short chunk is padded by repeating its
        last pair): GEMM and convolution kernels pick their blocking by shape, so a pair scored in a
        batch of 5 and in a batch of 16 differs in the last bits. With one shape a pair's score does
        not depend on which other pairs a runner happened to batch it with, and re-runs are identical.
        """
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        torch = self._torch
        out = np.empty(len(images), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                imgs = list(images[start : start + self.batch_size])
                txts = list(texts[start : start + self.batch_size])
                n = len(imgs)
                pixels = torch.stack([self.preprocess(im) for im in imgs])
                tokens = self.tokenizer(txts)
                if n < self.batch_size:  # pad to the one shape
                    pad = self.batch_size - n
                    pixels = torch.cat([pixels, pixels[-1:].expand(pad, *pixels.shape[1:])])
                    tokens = torch.cat([tokens, tokens[-1:].expand(pad, *tokens.shape[1:])])
                img_emb = self.model.encode_image(pixels.to(self.device), normalize=True)
                txt_emb = self.model.encode_text(tokens.to(self.device), normalize=True)
                out[start : start + n] = (img_emb * txt_emb).sum(-1)[:n].float().cpu().numpy()
        return out
