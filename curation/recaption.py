"""Altogether-style re-captioning: the VLM sees the image and the original caption as a prior, and
its output is kept only if it is a plausible, non-degenerate rewrite of that caption.

A rejected re-caption never drops the pair: the sample keeps its original caption, and the
re-caption's reason is recorded (``recaption_status``), so shards carry both captions when both
are good and the original alone otherwise.

Checks on a generated caption, in order (first failing reason wins):

| reason | rule (defaults in ``RecaptionConfig``) |
|---|---|
| ``generation_error`` | the engine returned an error for this request |
| ``truncated`` | generation stopped at max_tokens (finish reason 'length') |
| ``empty`` | no words after stripping the prompt echo and whitespace |
| ``too_short`` / ``too_long`` | fewer than ``min_words`` / more than ``max_words`` words |
| caption-quality reasons | ``curation.text_quality.check_caption`` (repetition, special chars, language) |
| ``inconsistent`` | consistency with the original < ``min_consistency`` |

Consistency measure: the share of the original caption's content words (lower-cased word tokens
that are not stop words, crude plural folding) that reappear in the new caption. Altogether
re-aligns existing alt-text rather than inventing a new description, so a rewrite that keeps none
of the original's content words is more likely a hallucination than an improvement. Originals
without content words (e.g. "A.") are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from curation import text_quality
from curation.records import KEEP, Verdict, drop

SYSTEM_PROMPT = "You are a helpful assistant that writes accurate, detailed image captions."
USER_TEMPLATE = (
    "Here is an image and its existing alt-text, which may be incomplete, noisy or partly wrong:\n"
    '"{caption}"\n'
    "Rewrite the alt-text into one accurate caption of the image. Keep every correct detail of the "
    "alt-text (names, places, text in the image), fix what is wrong, and add what is clearly visible. "
    "Answer with the caption only."
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class RecaptionConfig:
    min_words: int = 3
    max_words: int = 120
    min_consistency: float = 0.3
    quality: text_quality.CaptionQualityConfig = field(default_factory=lambda: text_quality.DEFAULT_CONFIG)


DEFAULT_CONFIG = RecaptionConfig()


def messages_for(caption: str, image: bytes) -> list[dict]:
    """Chat messages for one image + original caption (OpenAI/vLLM chat format)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image", "image": image},
                                     {"type": "text", "text": USER_TEMPLATE.format(caption=caption.strip())}]},
    ]


def content_words(text: str) -> set[str]:
    """Lower-cased word tokens minus stop words, with a trailing plural 's' folded."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if w in text_quality.ENGLISH_STOPWORDS or w.isdigit():
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def consistency(original: str, new: str) -> float | None:
    """Share of the original's content words found in the new caption (None: nothing to check)."""
    orig = content_words(original)
    if not orig:
        return None
    return len(orig & content_words(new)) / len(orig)


def clean(text: str) -> str:
    """Strip whitespace, surrounding quotes and a leading 'Caption:' label."""
    t = text.strip()
    t = re.sub(r"^(caption|new caption|rewritten caption)\s*:\s*", "", t, flags=re.I)
    return t.strip().strip('"').strip()


def check_recaption(original: str, new: str, finish_reason: str | None, config: RecaptionConfig = DEFAULT_CONFIG,
                    error: str | None = None) -> Verdict:
    """Keep or reject one generated caption (see the module docstring for the order of checks)."""
    if error:
        return drop("generation_error")
    if finish_reason == "length":
        return drop("truncated")
    text = clean(new)
    n = len(text.split())
    if n == 0:
        return drop("empty")
    if n < config.min_words:
        return drop("too_short")
    if n > config.max_words:
        return drop("too_long")
    verdict = text_quality.check_caption(text, config.quality)
    if not verdict.keep:
        return verdict
    c = consistency(original, text)
    if c is not None and c < config.min_consistency:
        return drop("inconsistent")
    return KEEP
