"""Quality of interleaved documents, OBELICS style: element (node) filters, then document filters.

Each check returns a ``curation.records.Verdict`` (datatrove semantics: keep, or drop with a
snake_case reason). As in OBELICS, a failing *element* is removed from its document (a boilerplate
paragraph, an icon), and a failing *document* is dropped whole (to quarantine).

The text measures are ``curation.text_quality``'s (words, character and word n-gram repetition,
special-character and stop-word ratios, language id, all OBELICS definitions); text elements go
through its ``check_caption`` with OBELICS's node-level values. Two scores are added, both kept
as manifest columns by ``document_stats`` and usable as filters:

- **knowledge density**: the share of a document's tokens that carry specific information:
  numbers (any token with a digit: dates, quantities, prices, versions), names (a capitalised
  token that does not start a sentence or a line, and is not a stop word: "Anseriformes", "Esper",
  "Hanoi") and rare terms (wordfreq Zipf frequency below ``rare_zipf`` = 3, i.e. less than once
  per million words in the language: "eigenvalue", "hibernation"). Tokens are whitespace-split
  pieces with non-word characters stripped from both ends. Why this and not a compression ratio
  (zlib bytes / raw bytes): on the real data compression put the technical PDFs (median 0.41)
  with page boilerplate (0.41) and below news (0.49), and it falls with length; this score ranks
  technical text above news and news above fluff: median 0.27 on the English born-digital PDFs of ``pdf/`` (raw page text, minimum 0.063),
  0.14 on the 161 English gold news bodies of the article benchmark (as documents, after the
  element filters), whose lowest are a game FAQ (0.0) and a game-app promo (0.012), then 0.027.
  It is a specificity score, not a boilerplate detector (navigation text is full of names and
  numbers; extraction removes it). Languages without word spaces (zh, ja, th) get None;
  languages without a wordfreq list count numbers and names only.
- **readability**: Flesch reading ease and Flesch-Kincaid grade from ``textstat`` (its stateless
  backend, language passed per call, CMU pronouncing dictionary for English syllables). Computed
  for ``readability_languages`` (English by default; the formulas and the threshold are
  calibrated for English). Very negative reading ease means no sentence structure: menus, link
  lists, keyword lists.

Default thresholds (``DocQualityConfig``): OBELICS's (DESIGN.md 4) for the measures they define;
for the two scores, the values below were set on the real texts (figures in the tests):

- ``min_reading_ease=0``: all 161 English gold news bodies score >= 13.4 and all English
  born-digital PDFs >= 23.9, while the boilerplate of the same pages (page text minus the article:
  navigation, footers) scores below 0 on 14 of 153 pages; the one trafilatura extraction below 0
  is a reprint notice plus a URL.
- ``min_knowledge_density=0.02``: fewer than one token in 50 is a number, a name or a rare term;
  drops the two game texts above and nothing else of the gold bodies, no PDF.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from curation.records import KEEP, Verdict, drop
from curation.text_quality import (
    STOPWORDS,
    CaptionQualityConfig,
    char_repetition,
    check_caption,
    detect_language,
    special_ratio,
    standardize,
    stopword_ratio,
    word_repetition,
    words,
)

# OBELICS node-level values (DESIGN.md 4) for paragraphs. Lang-id and the stop-word ratio are
# left to the document level: on a 4-word paragraph ("Photo: Hau Dinh, AP") langid is noise (see
# curation.text_quality), and OBELICS's document bounds are the stricter ones anyway.
NODE_CONFIG = CaptionQualityConfig(
    min_words=4,
    max_words=1000,
    min_chars=0,
    max_chars=None,
    max_special_ratio=0.3,
    max_char_repetition=0.1,
    max_word_repetition=0.1,
    allowed_languages=None,
    min_stopword_ratio=None,
)
# Headings are short by nature ("Etymology"): no lower word bound, and the special-character bound
# of short texts (whitespace counts as special: "TERROR LEVEL 100" scores 0.31; 0.45 as for
# captions, see curation.text_quality). On the 181 benchmark pages 0.3 dropped 47 headings.
HEADING_CONFIG = replace(NODE_CONFIG, min_words=1, max_special_ratio=0.45)

# Tables (HTML text elements with role "table", PDF elements of type "table") are rows of cells
# joined by "|": symbols, digits and repeated cells by design, so only emptiness and the word
# bounds apply (OBELICS has no tables; its paragraph bounds would drop nearly all of them).
TABLE_CONFIG = replace(NODE_CONFIG, min_words=2, max_special_ratio=None, max_char_repetition=None,
                       max_word_repetition=None)

# Checks in the order check_document applies them (first failing gives the reason).
DOC_CHECK_ORDER: tuple[str, ...] = (
    "empty",
    "word_count",  # too_few_words / too_many_words
    "special_characters",
    "char_repetition",
    "word_repetition",
    "language",  # language_low_confidence / language_mismatch
    "stopword_ratio",
    "image_count",  # too_few_images / too_many_images
    "knowledge_density",  # low_knowledge_density
    "readability",  # low_reading_ease / high_grade_level
)

_NO_SPACE_LANGS = frozenset({"zh", "ja", "th"})
_SENTENCE_BREAK = re.compile(r"(?<=[.!?\u2026\u3002])\s+|\n+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


@dataclass(frozen=True)
class DocQualityConfig:
    """Thresholds; ``None`` disables a bound. Document values are OBELICS's (DESIGN.md 4)."""

    node: CaptionQualityConfig = NODE_CONFIG
    heading: CaptionQualityConfig = HEADING_CONFIG
    table: CaptionQualityConfig = TABLE_CONFIG
    # document level
    min_words: int = 10
    max_words: int | None = 2000
    max_special_ratio: float | None = 0.275
    char_ngram: int = 10
    max_char_repetition: float | None = 0.1
    word_ngram: int = 5
    max_word_repetition: float | None = 0.2
    allowed_languages: tuple[str, ...] | None = ("en",)
    min_language_prob: float = 0.8
    min_stopword_ratio: float | None = 0.35
    # images
    min_images: int = 1
    max_images: int | None = 30
    min_image_side: int | None = 150
    max_image_side: int | None = 20000
    max_aspect_ratio: float | None = 2.0
    # scores (module docstring)
    min_knowledge_density: float | None = 0.02
    rare_zipf: float = 3.0
    min_reading_ease: float | None = 0.0
    max_grade_level: float | None = None
    readability_languages: tuple[str, ...] = ("en",)


DEFAULT_DOC_CONFIG = DocQualityConfig()


# ----------------------------------------------------------------------------------------------
# Elements


def check_text_element(element: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG) -> Verdict:
    """OBELICS node filter on one text element; headings and tables have their own bounds."""
    if element.get("type") == "table" or element.get("role") == "table":
        cfg = config.table
    elif element.get("role") == "heading":
        cfg = config.heading
    else:
        cfg = config.node
    return check_caption(element.get("text"), cfg)


def check_image_element(element: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG) -> Verdict:
    """Image size and aspect bounds; an image whose size is not known yet (no HTML width/height,
    not downloaded) is kept: the check runs again when the size is known.

    Reasons: image_too_small, image_too_large, image_aspect_ratio. Sizes are read from
    ``width``/``height`` (HTML documents) or ``image_width``/``image_height`` (PDF documents).
    """
    w = element.get("width") or element.get("image_width")
    h = element.get("height") or element.get("image_height")
    if not w or not h:
        return KEEP
    if config.min_image_side is not None and min(w, h) < config.min_image_side:
        return drop("image_too_small")
    if config.max_image_side is not None and max(w, h) > config.max_image_side:
        return drop("image_too_large")
    if config.max_aspect_ratio is not None and max(w, h) / min(w, h) > config.max_aspect_ratio:
        return drop("image_aspect_ratio")
    return KEEP


def filter_elements(doc: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG) -> tuple[dict, Counter]:
    """The document without the elements that fail their node check, and drops by reason.

    The input is not modified; reasons are prefixed by the element type (``text:too_few_words``,
    ``image:image_too_small``) so one Counter can hold both.
    """
    kept, drops = [], Counter()
    for el in doc.get("elements", []):
        verdict = check_image_element(el, config) if el.get("type") == "image" else check_text_element(el, config)
        if verdict.keep:
            kept.append(el)
        else:
            drops[f"{el.get('type')}:{verdict.reason}"] += 1
    out = dict(doc)
    out["elements"] = kept
    out["n_text"] = sum(e.get("type") == "text" for e in kept)
    out["n_images"] = sum(e.get("type") == "image" for e in kept)
    return out, drops


# ----------------------------------------------------------------------------------------------
# Scores


@functools.lru_cache(maxsize=16)
def _frequencies(lang: str) -> dict[str, float] | None:
    import wordfreq

    if lang not in wordfreq.available_languages():
        return None
    return wordfreq.get_frequency_dict(lang)


def knowledge_density(text: str, lang: str | None = "en", rare_zipf: float = 3.0) -> float | None:
    """Share of tokens that are numbers, names or rare terms (module docstring); None if no tokens
    or the language is written without spaces."""
    if lang in _NO_SPACE_LANGS:
        return None
    freq = _frequencies(lang) if lang else None
    stop = STOPWORDS.get(lang or "", frozenset())
    cut = 10 ** (rare_zipf - 9)  # Zipf z = log10(frequency per billion words)
    n = specific = 0
    for sentence in _SENTENCE_BREAK.split(text):
        for k, raw in enumerate(sentence.split()):
            tok = _EDGE.sub("", raw)
            if not tok:
                continue
            n += 1
            low = tok.lower()
            if any(c.isdigit() for c in tok):
                specific += 1
            elif k > 0 and tok[0].isupper() and low not in stop:
                specific += 1
            elif freq is not None and tok.isalpha() and freq.get(low, 0.0) < cut:
                specific += 1
    return specific / n if n else None


def readability(text: str, lang: str | None = "en") -> tuple[float | None, float | None]:
    """(Flesch reading ease, Flesch-Kincaid grade) from textstat; grade is English only."""
    from textstat.backend import metrics
    from textstat.backend.utils.constants import LANG_CONFIGS

    if not text.strip() or lang not in LANG_CONFIGS:
        return None, None
    code = "en_US" if lang == "en" else lang
    ease = float(metrics.flesch_reading_ease(text, code))
    grade = float(metrics.flesch_kincaid_grade(text, code)) if lang == "en" else None
    return ease, grade


# ----------------------------------------------------------------------------------------------
# Documents


def document_text(doc: dict) -> str:
    """Text elements joined by blank lines (what the document-level measures read).

    Tables (PDF elements of type "table") are left out: cell grids would skew the prose measures.
    HTML tables are text elements with role "table" and stay in, as trafilatura often marks
    layout tables that hold ordinary paragraphs.
    """
    return "\n\n".join(e["text"] for e in doc.get("elements", []) if e.get("type") == "text" and e.get("text"))


def document_stats(doc: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG) -> dict[str, Any]:
    """Every document measure (manifest columns); language-dependent ones are None when unknown."""
    text = document_text(doc)
    flat = standardize(text)
    wl = words(flat)
    lang, prob = detect_language(flat) if wl else (None, None)
    ease, grade = readability(text, lang) if lang in config.readability_languages else (None, None)
    return {
        "n_words": len(wl),
        "n_chars": len(flat),
        "n_text": sum(e.get("type") == "text" for e in doc.get("elements", [])),
        "n_images": sum(e.get("type") == "image" for e in doc.get("elements", [])),
        "special_ratio": special_ratio(flat),
        "char_repetition": char_repetition(flat, config.char_ngram),
        "word_repetition": word_repetition(wl, config.word_ngram),
        "language": lang,
        "language_prob": prob,
        "stopword_ratio": stopword_ratio(wl, lang) if lang else None,
        "knowledge_density": knowledge_density(text, lang, config.rare_zipf) if wl else None,
        "reading_ease": ease,
        "grade_level": grade,
    }


def check_document(doc: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG, stats: dict | None = None) -> Verdict:
    """Document filters in ``DOC_CHECK_ORDER``; the first failing one gives the reason.

    Reasons: empty, too_few_words, too_many_words, special_characters, char_repetition,
    word_repetition, language_low_confidence, language_mismatch, stopword_ratio, too_few_images,
    too_many_images, low_knowledge_density, low_reading_ease, high_grade_level. ``stats`` (from
    ``document_stats``) avoids measuring twice.
    """
    s = stats if stats is not None else document_stats(doc, config)
    if s["n_words"] == 0:
        return drop("empty")
    if s["n_words"] < config.min_words:
        return drop("too_few_words")
    if config.max_words is not None and s["n_words"] > config.max_words:
        return drop("too_many_words")
    if config.max_special_ratio is not None and s["special_ratio"] > config.max_special_ratio:
        return drop("special_characters")
    if config.max_char_repetition is not None and s["char_repetition"] > config.max_char_repetition:
        return drop("char_repetition")
    if config.max_word_repetition is not None and s["word_repetition"] > config.max_word_repetition:
        return drop("word_repetition")
    if config.allowed_languages is not None:
        if s["language_prob"] < config.min_language_prob:
            return drop("language_low_confidence")
        if s["language"] not in config.allowed_languages:
            return drop("language_mismatch")
    if config.min_stopword_ratio and s["stopword_ratio"] is not None and s["stopword_ratio"] < config.min_stopword_ratio:
        return drop("stopword_ratio")
    if s["n_images"] < config.min_images:
        return drop("too_few_images")
    if config.max_images is not None and s["n_images"] > config.max_images:
        return drop("too_many_images")
    kd = s["knowledge_density"]
    if config.min_knowledge_density is not None and kd is not None and kd < config.min_knowledge_density:
        return drop("low_knowledge_density")
    if config.min_reading_ease is not None and s["reading_ease"] is not None and s["reading_ease"] < config.min_reading_ease:
        return drop("low_reading_ease")
    if config.max_grade_level is not None and s["grade_level"] is not None and s["grade_level"] > config.max_grade_level:
        return drop("high_grade_level")
    return KEEP


def curate_document(doc: dict, config: DocQualityConfig = DEFAULT_DOC_CONFIG) -> tuple[dict, Verdict, dict, Counter]:
    """Element filters, then document filters: (filtered document, verdict, stats, element drops)."""
    filtered, drops = filter_elements(doc, config)
    stats = document_stats(filtered, config)
    return filtered, check_document(filtered, config, stats), stats, drops
