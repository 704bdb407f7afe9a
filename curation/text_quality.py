"""Caption quality filters (OBELICS-style), datatrove semantics: each check returns a Verdict.

The measures follow the OBELICS web-document filters (Laurençon et al. 2023, whose code reuses the
BigScience ROOTS filters); the thresholds are OBELICS's node-level values where they make sense for
image captions, and deliberately relaxed where captions differ from web paragraphs (see
``CaptionQualityConfig``).

Definitions (``text`` is the caption after whitespace standardisation and strip):

- words: ``text`` split on whitespace, lowercased, special characters stripped from both ends of
  each word, empty words removed (OBELICS ``get_words_from_text``). Chinese and Japanese have no
  word spaces, so every Han / kana character counts as one word (a Chinese word averages about 1.5
  characters, so this slightly over-counts; it keeps the word bounds meaningful for 'zh').
- special characters: every character but letters, i.e. the regex class ``[\\W\\d_]``:
  punctuation, symbols (emoji included), whitespace, digits, underscore and combining marks. These
  are the classes OBELICS lists explicitly (``string.punctuation + digits + whitespace`` plus
  Unicode punctuation, symbols, emoji and a few Indic vowel signs); whitespace counts, as in
  OBELICS. ``special_ratio = n_special / n_chars``.
- character n-gram repetition (n = 10): count every character n-gram of ``text``; sort the counts
  in decreasing order; k = min(floor(sqrt(number of distinct n-grams)), number of distinct n-grams
  that occur more than once); ``char_repetition = sum of the k largest counts / number of
  n-grams``. This is the OBELICS/ROOTS definition, not Gopher's "fraction of characters inside
  duplicated n-grams"; the sqrt cap keeps long natural texts from scoring high.
- word n-gram repetition (n = 5): over the word list, ``word_repetition = (occurrences of n-grams
  that occur more than once) / (number of n-grams)`` (OBELICS/ROOTS). Texts shorter than n words
  (or n characters) have no n-grams and score 0.
- stop-word ratio: fraction of words in the stop-word list of the caption's language. Only English
  has a list here (``ENGLISH_STOPWORDS``, embedded below); Chinese would need a word segmenter, so
  the check is skipped for languages without a list.
- language: ``langid`` (offline, 97 languages) with normalised probabilities
  (``LanguageIdentifier.from_modelstring(model, norm_probs=True)``); OBELICS used fastText lid.176
  with the same 0.8 cut-off.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.records import KEEP, Verdict, drop

# Checks in the order ``check_caption`` applies them (first failing check gives the reason). Cheap
# length checks first, lang-id (the expensive one) late, stop words last because they need the
# language.
CHECK_ORDER: tuple[str, ...] = (
    "empty",
    "word_count",  # too_few_words / too_many_words
    "char_count",  # too_few_chars / too_many_chars
    "special_characters",
    "char_repetition",
    "word_repetition",
    "language",  # language_mismatch / language_low_confidence / script_mismatch
    "stopword_ratio",
)

# A closed-class English function-word list (articles, determiners, pronouns, prepositions,
# conjunctions, auxiliaries and modals, negation and degree adverbs, common contractions), written
# for this project; about the size of the Snowball / OBELICS lists, so OBELICS's ratio thresholds
# keep their meaning. Content words (e.g. 'room', 'fire', 'man') are deliberately absent: unlike the
# large "stop-words" PyPI lists, captions are mostly content words and must not count as stop words.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those each every either neither some any no all both few many much more
    most other another such what which whose whatever whichever several enough own same
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves who whom whoever one oneself
    someone somebody something anyone anybody anything everyone everybody everything nobody nothing
    none
    about above across after against along alongside amid among amongst around as at atop before
    behind below beneath beside besides between beyond by despite down during except for from in
    inside into like near of off on onto opposite out outside over past per since than through
    throughout till to toward towards under underneath unlike until up upon via with within without
    and but or nor so yet if because although though while whereas whether unless once when whenever
    where wherever why how then also
    am is are was were be been being have has had having do does did doing can could may might must
    shall should will would ought
    not very too quite rather just only even still again ever never here there now almost already
    it's i'm i've i'd i'll you're you've he's she's we're we've they're they've that's there's
    what's who's let's don't doesn't didn't isn't aren't wasn't weren't can't couldn't won't
    wouldn't shouldn't haven't hasn't
    """.split()
)

STOPWORDS: dict[str, frozenset[str]] = {"en": ENGLISH_STOPWORDS}

_WS_RE = re.compile(r"\s+")
_SPECIAL_RE = re.compile(r"[\W\d_]")
# Han (CJK unified ideographs, extension A, compatibility, supplementary planes) and kana: scripts
# written without spaces between words.
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_WORD_RE = re.compile(rf"[{_CJK_CLASS}]|[^\s{_CJK_CLASS}]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Scripts that identify a language family on their own (used on captions too short for lang-id).
_SCRIPT_LANGS: dict[str, frozenset[str]] = {
    "han": frozenset({"zh", "ja"}),
    "kana": frozenset({"ja"}),
    "hangul": frozenset({"ko"}),
    "cyrillic": frozenset({"ru", "uk", "bg", "be", "sr", "mk", "kk", "ky", "mn"}),
    "arabic": frozenset({"ar", "fa", "ur", "ps", "ug", "ku"}),
    "greek": frozenset({"el"}),
    "hebrew": frozenset({"he", "yi"}),
    "devanagari": frozenset({"hi", "mr", "ne"}),
    "thai": frozenset({"th"}),
}
_NON_LATIN_LANGS = frozenset().union(*_SCRIPT_LANGS.values())


@dataclass(frozen=True)
class CaptionQualityConfig:
    """Thresholds of ``check_caption``; ``None`` (or 0 for minima) disables a bound.

    The defaults are OBELICS's node-level values, relaxed where short captions differ from web
    paragraphs; each relaxation was decided on the real captions in ``shared/data/image_caption``
    (COCO: 795 human captions of 7-41 words; Tux Paint: 538 English labels of 1-31 words such as
    "A frog.", and their 468 zh_CN translations). ``OBELICS_NODE_CONFIG`` has the literal values.

    - ``min_words=2`` (OBELICS: 4). 4 would drop 401 of the 538 Tux Paint labels; 2 drops only the
      11 one-word ones ("Hibiscus", "Cathedral."), as a one-word label is a tag, not a caption.
    - ``min_chars=0`` (off): the word floor already bounds length, and a character floor hurts
      Chinese (LAION's 5-character floor drops 215 of the 468 zh_CN captions, e.g. 青蛙。).
      ``max_chars=5000`` catches space-free junk (base64, URLs) that the word bound misses.
    - ``max_special_ratio=0.45`` (OBELICS: 0.3). Whitespace counts as special, so every two-word
      label "A dog." already scores 2/6: 0.3 drops 26 Tux Paint labels and 137 zh_CN captions
      (dense fullwidth punctuation); 0.45 drops no COCO caption and no English Tux Paint label.
    - ``max_char_repetition=0.3`` (OBELICS: 0.1). In a one-sentence caption one repeated word of
      10+ characters dominates the 10-grams: "A man holding a baseball bat during a baseball game."
      scores 0.28; 0.1 drops 10 good COCO captions, 0.3 none, while "Fire! Fire! Fire!" scores 0.5.
    - ``max_word_repetition=0.2`` (OBELICS: 0.1 nodes, 0.2 documents): one repeated 5-gram in a
      17-word COCO caption already gives 0.15.
    - ``min_stopword_ratio=0.1`` from ``stopword_min_words=8`` words (OBELICS: 0.3 on every node).
      Captions are content-dense: 0.3 drops 46 COCO captions, and short noun phrases ("Red apple")
      have no function words at all; long captions without any are keyword lists.
    - ``allowed_languages=('en',)``, ``min_language_prob=0.8`` (OBELICS), from
      ``langid_min_words=6`` words. Lang-id on shorter text is noise: langid gives 'en' >= 0.8 for
      17 of the 223 two-word Tux Paint labels, 51 of 167 three-word, 27 of 51 four-word and 21 of
      24 five-word ones, but for 59 of the 62 labels of 6+ words (and 786 of the 795 COCO captions). Shorter captions get a script check instead: a caption whose letters are
      mostly in a script that no allowed language uses (Han for an English-only set) is dropped as
      ``script_mismatch``. Add 'zh' to ``allowed_languages`` for Chinese captions.
    """

    min_words: int = 2
    max_words: int | None = 1000
    min_chars: int = 0
    max_chars: int | None = 5000
    max_special_ratio: float | None = 0.45
    char_ngram: int = 10
    max_char_repetition: float | None = 0.3
    word_ngram: int = 5
    max_word_repetition: float | None = 0.2
    allowed_languages: tuple[str, ...] | None = ("en",)
    min_language_prob: float = 0.8
    langid_min_words: int = 6
    min_stopword_ratio: float | None = 0.1
    stopword_min_words: int = 8


# OBELICS node-level values as published (their config_filter_web_documents.yaml), lang-id on
# every caption; far stricter on captions than the defaults (see the counts in the tests).
OBELICS_NODE_CONFIG = CaptionQualityConfig(
    min_words=4,
    max_words=1000,
    min_chars=0,
    max_chars=None,
    max_special_ratio=0.3,
    max_char_repetition=0.1,
    max_word_repetition=0.1,
    langid_min_words=0,
    min_stopword_ratio=0.3,
    stopword_min_words=0,
)

DEFAULT_CONFIG = CaptionQualityConfig()


def standardize(text: str) -> str:
    """Collapse every run of (Unicode) whitespace to one space and strip the ends."""
    return _WS_RE.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """Lowercased words with special characters stripped from both ends; each Han/kana char is a word."""
    out = []
    for tok in _WORD_RE.findall(text.lower().translate(_APOSTROPHES)):
        start, end = 0, len(tok)
        while start < end and _SPECIAL_RE.match(tok[start]):
            start += 1
        while end > start and _SPECIAL_RE.match(tok[end - 1]):
            end -= 1
        if start < end:
            out.append(tok[start:end])
    return out


def special_ratio(text: str) -> float:
    """Fraction of characters that are punctuation, symbols, whitespace, digits or underscore."""
    return len(_SPECIAL_RE.findall(text)) / len(text) if text else 0.0


def char_repetition(text: str, n: int = 10) -> float:
    """OBELICS character n-gram repetition ratio (module docstring)."""
    if len(text) < n:
        return 0.0
    counts = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    repeated = sum(1 for c in counts if c > 1)
    k = min(math.isqrt(len(counts)), repeated)
    return sum(counts[:k]) / (len(text) - n + 1)


def word_repetition(word_list: list[str], n: int = 5) -> float:
    """OBELICS word n-gram repetition ratio (module docstring)."""
    if len(word_list) < n:
        return 0.0
    counts = Counter(tuple(word_list[i : i + n]) for i in range(len(word_list) - n + 1)).values()
    return sum(c for c in counts if c > 1) / (len(word_list) - n + 1)


def stopword_ratio(word_list: list[str], language: str = "en") -> float | None:
    """Fraction of words in the language's stop-word list; None when the language has no list."""
    stop = STOPWORDS.get(language)
    if stop is None:
        return None
    return sum(1 for w in word_list if w in stop) / len(word_list) if word_list else 0.0


@functools.lru_cache(maxsize=1)
def _identifier():
    # Loading the model takes ~0.5 s, so once per process (each Beam worker builds its own).
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, normalised probability) from langid, on the lowercased text.

    Lowercasing (as OBELICS does before fastText) fixes ALL-CAPS captions: on COCO, langid gives
    'en' >= 0.8 for 786 of 795 captions lowercased against 775 as written. Han text without kana is
    reported as 'zh' when langid says 'ja': langid calls 160 of the 468 Tux Paint zh_CN captions
    Japanese, and Japanese prose is practically never kana-free.
    """
    ident = _identifier()
    # langid's own classify() multiplies the dense uint32 feature vector with the float32 model
    # (no BLAS path for mixed types: ~5 ms a caption); the vector of a caption has a few dozen
    # non-zeros, so the same sum over those rows is ~1000x faster (same float64 arithmetic).
    fv = ident.instance2fv(text.lower())
    nz = np.flatnonzero(fv)
    scores = fv[nz].astype(np.float64) @ ident.nb_ptc[nz].astype(np.float64) + ident.nb_pc
    probs = ident.norm_probs(scores)
    best = int(np.argmax(probs))
    lang, prob = str(ident.nb_classes[best]), float(probs[best])
    if lang == "ja" and dominant_script(text) == "han":
        lang = "zh"
    return lang, float(prob)


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    if name.startswith("CJK"):
        return "han"
    for prefix, script in (
        ("HIRAGANA", "kana"),
        ("KATAKANA", "kana"),
        ("HANGUL", "hangul"),
        ("CYRILLIC", "cyrillic"),
        ("ARABIC", "arabic"),
        ("GREEK", "greek"),
        ("HEBREW", "hebrew"),
        ("DEVANAGARI", "devanagari"),
        ("THAI", "thai"),
        ("LATIN", "latin"),
    ):
        if name.startswith(prefix):
            return script
    return "other"


def dominant_script(text: str) -> str | None:
    """The script of most letters in ``text`` ('latin', 'han', 'kana', 'cyrillic', ...); None if no letters."""
    counts = Counter(_script(ch) for ch in text if ch.isalpha())
    if not counts:
        return None
    # Japanese mixes kana and Han: any kana makes it Japanese rather than Chinese.
    if counts.get("kana") and counts.get("han"):
        return "kana"
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def script_allowed(script: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether some allowed language is written in ``script`` (Latin = any language not listed)."""
    if script is None or script == "other":
        return True
    if script == "latin":
        return any(lang not in _NON_LATIN_LANGS for lang in allowed)
    return bool(_SCRIPT_LANGS[script] & set(allowed))


def caption_stats(text: str, config: CaptionQualityConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Every measured value (manifest columns): words, chars, ratios, language and its probability.

    Language is measured on every non-empty caption (also the short ones ``check_caption`` does not
    lang-id); ``stopword_ratio`` uses the detected language's list and is None without one.
    """
    text = standardize(text)
    wl = words(text)
    lang, prob = detect_language(text) if text else (None, None)
    return {
        "n_words": len(wl),
        "n_chars": len(text),
        "special_ratio": special_ratio(text),
        "char_repetition": char_repetition(text, config.char_ngram),
        "word_repetition": word_repetition(wl, config.word_ngram),
        "script": dominant_script(text),
        "language": lang,
        "language_prob": prob,
        "stopword_ratio": stopword_ratio(wl, lang) if lang else None,
    }


def check_caption(text: str | None, config: CaptionQualityConfig = DEFAULT_CONFIG) -> Verdict:
    """Apply the checks in ``CHECK_ORDER``; the first failing one gives the drop reason.

    Reasons: empty, too_few_words, too_many_words, too_few_chars, too_many_chars,
    special_characters, char_repetition, word_repetition, script_mismatch, language_mismatch,
    language_low_confidence, stopword_ratio.
    """
    text = standardize(text or "")
    if not text:
        return drop("empty")
    wl = words(text)
    n = len(wl)
    if n < config.min_words:
        return drop("too_few_words")
    if config.max_words is not None and n > config.max_words:
        return drop("too_many_words")
    if len(text) < config.min_chars:
        return drop("too_few_chars")
    if config.max_chars is not None and len(text) > config.max_chars:
        return drop("too_many_chars")
    if config.max_special_ratio is not None and special_ratio(text) > config.max_special_ratio:
        return drop("special_characters")
    if config.max_char_repetition is not None and char_repetition(text, config.char_ngram) > config.max_char_repetition:
        return drop("char_repetition")
    if config.max_word_repetition is not None and word_repetition(wl, config.word_ngram) > config.max_word_repetition:
        return drop("word_repetition")

    lang: str | None = None
    if config.allowed_languages is not None:
        if n < config.langid_min_words:
            if not script_allowed(dominant_script(text), config.allowed_languages):
                return drop("script_mismatch")
        else:
            lang, prob = detect_language(text)
            # An unconfident guess is no evidence of another language: low confidence first.
            if prob < config.min_language_prob:
                return drop("language_low_confidence")
            if lang not in config.allowed_languages:
                return drop("language_mismatch")

    if config.min_stopword_ratio and n >= config.stopword_min_words:
        if lang is None:
            lang = detect_language(text)[0]
        ratio = stopword_ratio(wl, lang)
        if ratio is not None and ratio < config.min_stopword_ratio:
            return drop("stopword_ratio")
    return KEEP
