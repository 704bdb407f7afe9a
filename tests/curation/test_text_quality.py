"""Caption quality filters: measures by hand, exact reasons, and exact drop counts on real captions."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import FrozenInstanceError, replace

import pytest

from curation.text_quality import (
    DEFAULT_CONFIG,
    ENGLISH_STOPWORDS,
    OBELICS_NODE_CONFIG,
    CaptionQualityConfig,
    caption_stats,
    char_repetition,
    check_caption,
    detect_language,
    dominant_script,
    script_allowed,
    special_ratio,
    standardize,
    stopword_ratio,
    word_repetition,
    words,
)

ZH_CONFIG = CaptionQualityConfig(allowed_languages=("en", "zh"))


@pytest.fixture(scope="module")
def real_captions(shared_data):
    """COCO captions (795), Tux Paint English labels (538) and their zh_CN translations (468)."""
    root = shared_data / "image_caption"
    coco = [
        c for line in (root / "coco_mini/captions.jsonl").read_text().splitlines() for c in json.loads(line)["captions"]
    ]
    tux = [json.loads(line) for line in (root / "tuxpaint_stamps/captions.jsonl").read_text().splitlines()]
    en = [t["caption"] for t in tux]
    zh = [t["translations"]["zh_CN"] for t in tux if t["translations"].get("zh_CN")]
    assert (len(coco), len(en), len(zh)) == (795, 538, 468)
    return {"coco": coco, "tux": en, "zh": zh}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A frog.", ["a", "frog"]),
        ("  An   Adelaide\nRosella. ", ["an", "adelaide", "rosella"]),
        # OBELICS splits on whitespace only: an em dash inside a token stays.
        ("Tux—the Linux mascot!", ["tux—the", "linux", "mascot"]),
        ("A “Fuji” apple.", ["a", "fuji", "apple"]),
        ("It’s a dog's toy", ["it's", "a", "dog's", "toy"]),
        ("Sale: 50% off!!! $$$ 9.99", ["sale", "off"]),
        # One word per Han character; fullwidth punctuation is stripped like ASCII punctuation.
        ("青蛙。", ["青", "蛙"]),
        ("企鹅－Ｌｉｎｕｘ的吉祥物。", ["企", "鹅", "ｌｉｎｕｘ", "的", "吉", "祥", "物"]),
        ("", []),
    ],
)
def test_words(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A dog.", 2 / 6),  # the space and the full stop
        ("8:25", 1.0),  # digits count as special (OBELICS)
        ("abc", 0.0),
        ("青蛙。", 1 / 3),
        ("", 0.0),
    ],
)
def test_special_ratio(text, expected):
    assert special_ratio(text) == pytest.approx(expected)


def test_char_repetition_by_hand():
    # "Fire! Fire! Fire!" has 8 ten-grams, 6 distinct: "Fire! Fire" and "ire! Fire!" twice each.
    # k = min(floor(sqrt(6)), 2 repeated) = 2 -> (2 + 2) / 8.
    assert char_repetition("Fire! Fire! Fire!") == 0.5
    # 12 identical characters: 3 ten-grams, 1 distinct, k = min(1, 1) -> 3 / 3.
    assert char_repetition("a" * 12) == 1.0
    # The sqrt cap: "abcdefghijklmnop" twice has 23 ten-grams, 16 distinct, 7 of them twice;
    # k = min(floor(sqrt(16)), 7) = 4 -> 4 * 2 / 23 (without the cap it would be 14 / 23).
    assert char_repetition("abcdefghijklmnop" * 2) == 8 / 23
    assert char_repetition("abcdefghijkl") == 0.0  # 3 distinct ten-grams, none repeated
    assert char_repetition("A frog.") == 0.0  # shorter than n: no n-grams
    assert char_repetition("abcdefghij") == 0.0  # exactly one n-gram


def test_word_repetition_by_hand():
    wl = "the cat sat on the mat the cat sat on the mat".split()
    # 8 five-grams; "the cat sat on the" (i=0, 6) and "cat sat on the mat" (i=1, 7) occur twice: 4 / 8.
    assert word_repetition(wl, 5) == 0.5
    assert word_repetition(wl[:4], 5) == 0.0
    assert word_repetition(["a", "b", "a", "b"], 2) == 2 / 3  # bigrams ab, ba, ab


def test_stopword_ratio():
    assert stopword_ratio(["a", "frog"]) == 0.5
    assert stopword_ratio(["red", "apple"]) == 0.0
    assert stopword_ratio([], "en") == 0.0
    assert stopword_ratio(["青", "蛙"], "zh") is None  # no Chinese list: the check is skipped
    # Function words only; content words that big lists include are not stop words.
    assert {"the", "with", "is", "don't"} <= ENGLISH_STOPWORDS
    assert not {"room", "fire", "man", "caption", "young"} & ENGLISH_STOPWORDS


@pytest.mark.parametrize(
    "text, script",
    [
        ("A frog.", "latin"),
        ("青蛙。", "han"),
        ("カエル", "kana"),
        ("カエルの子", "kana"),
        ("Лягушка", "cyrillic"),
        ("123 !", None),
    ],
)
def test_dominant_script(text, script):
    assert dominant_script(text) == script


def test_script_allowed():
    assert script_allowed("latin", ("en",))
    assert not script_allowed("han", ("en",))
    assert script_allowed("han", ("en", "zh"))
    assert not script_allowed("latin", ("zh",))
    assert script_allowed(None, ("zh",))


@pytest.mark.parametrize(
    "text, config, reason",
    [
        ("A frog.", DEFAULT_CONFIG, None),
        ("", DEFAULT_CONFIG, "empty"),
        (" \n\t ", DEFAULT_CONFIG, "empty"),
        (None, DEFAULT_CONFIG, "empty"),
        ("Saturn.", DEFAULT_CONFIG, "too_few_words"),
        (" ".join(f"w{i}" for i in range(1001)), DEFAULT_CONFIG, "too_many_words"),
        ("A frog.", CaptionQualityConfig(min_chars=10), "too_few_chars"),
        ("a " + "x" * 6000, DEFAULT_CONFIG, "too_many_chars"),
        ("Sale: 50% off!!! $$$ 9.99 ## ##", DEFAULT_CONFIG, "special_characters"),
        ("Fire! Fire! Fire!", DEFAULT_CONFIG, "char_repetition"),
        ("the cat sat on the mat the cat sat on the mat", DEFAULT_CONFIG, "word_repetition"),
        ("Der Hund schläft auf dem Sofa im Wohnzimmer.", DEFAULT_CONFIG, "language_mismatch"),
        ("A cute panda bear walks inside a zoo.", DEFAULT_CONFIG, "language_low_confidence"),  # COCO, p=0.61
        ("一只青蛙。", DEFAULT_CONFIG, "script_mismatch"),
        ("一只青蛙。", ZH_CONFIG, None),
        ("企鹅－Ｌｉｎｕｘ的吉祥物。", DEFAULT_CONFIG, "language_mismatch"),  # 7 words: lang-id says zh
        ("企鹅－Ｌｉｎｕｘ的吉祥物。", ZH_CONFIG, None),
        ("wedding dress bride white lace gown beautiful elegant vintage", DEFAULT_CONFIG, "stopword_ratio"),
        ("a wedding dress with white lace", DEFAULT_CONFIG, None),
        # Order: the first failing check wins ("Fire! Fire! Fire!" also fails char_repetition).
        ("Fire! Fire! Fire!", OBELICS_NODE_CONFIG, "too_few_words"),
        # Disabling a check lets the next one speak.
        ("Fire! Fire! Fire!", CaptionQualityConfig(max_char_repetition=None), None),
        ("Der Hund schläft auf dem Sofa im Wohnzimmer.", CaptionQualityConfig(allowed_languages=None), None),
        ("Der Hund schläft auf dem Sofa im Wohnzimmer.", CaptionQualityConfig(allowed_languages=("de",)), None),
    ],
)
def test_check_caption_reasons(text, config, reason):
    verdict = check_caption(text, config)
    assert verdict.keep is (reason is None)
    assert verdict.reason == reason


def test_caption_stats_values():
    s = caption_stats("  The cat sat on the mat the cat sat on the mat ")
    assert s["n_words"] == 12
    assert s["n_chars"] == len("The cat sat on the mat the cat sat on the mat")
    assert s["word_repetition"] == 0.5
    assert s["special_ratio"] == pytest.approx(11 / 45)
    assert s["stopword_ratio"] == 0.5  # 'the' x4 and 'on' x2 of 12 words
    assert (s["language"], s["script"]) == ("en", "latin")
    assert 0.8 <= s["language_prob"] <= 1.0
    assert set(s) == {
        "n_words",
        "n_chars",
        "special_ratio",
        "char_repetition",
        "word_repetition",
        "script",
        "language",
        "language_prob",
        "stopword_ratio",
    }
    empty = caption_stats("")
    assert (empty["n_words"], empty["language"], empty["stopword_ratio"]) == (0, None, None)
    assert caption_stats("青蛙。")["stopword_ratio"] is None


def test_standardize():
    assert standardize("  a\u00a0 b\n\tc  ") == "a b c"


def test_fast_langid_equals_langid(real_captions):
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    sample = real_captions["coco"][::8] + real_captions["tux"][::8] + real_captions["zh"][::8]
    for text in sample:
        lang, prob = ident.classify(text.lower())
        if lang == "ja" and dominant_script(text) == "han":
            lang = "zh"
        assert detect_language(text) == (lang, pytest.approx(prob, abs=1e-12))


# Exact outcomes on the real captions (langid 1.1.6). Keys: None = kept.
EXPECTED = {
    ("default", "coco"): {None: 786, "language_low_confidence": 6, "language_mismatch": 3},
    ("default", "tux"): {
        None: 523,
        "too_few_words": 11,
        "language_low_confidence": 2,
        "char_repetition": 1,
        "language_mismatch": 1,
    },
    ("default", "zh"): {
        "script_mismatch": 331,
        "language_mismatch": 120,
        "too_few_words": 13,
        "language_low_confidence": 2,
        "special_characters": 2,
    },
    ("zh", "zh"): {None: 451, "too_few_words": 13, "language_low_confidence": 2, "special_characters": 2},
    ("zh", "coco"): {None: 786, "language_low_confidence": 6, "language_mismatch": 3},
    ("obelics", "coco"): {
        None: 732,
        "stopword_ratio": 43,
        "char_repetition": 10,
        "language_low_confidence": 6,
        "language_mismatch": 3,
        "special_characters": 1,
    },
    ("obelics", "tux"): {
        None: 88,
        "too_few_words": 401,
        "language_low_confidence": 26,
        "stopword_ratio": 17,
        "language_mismatch": 4,
        "special_characters": 2,
    },
}
CONFIGS = {"default": DEFAULT_CONFIG, "zh": ZH_CONFIG, "obelics": OBELICS_NODE_CONFIG}


@pytest.mark.parametrize("config_name, dataset", sorted(EXPECTED))
def test_real_caption_outcomes(real_captions, config_name, dataset):
    counts = Counter(check_caption(c, CONFIGS[config_name]).reason for c in real_captions[dataset])
    assert dict(counts) == EXPECTED[(config_name, dataset)]


def test_real_drops_named(real_captions):
    tux = real_captions["tux"]
    dropped = {c: check_caption(c).reason for c in tux if not check_caption(c).keep}
    assert dropped["Fire! Fire! Fire!"] == "char_repetition"
    assert dropped["Cathedral."] == "too_few_words"
    assert dropped["Hibiscus"] == "too_few_words"
    assert dropped["A UK post box. Put your letter in here!"] == "language_mismatch"
    assert "A frog." not in dropped and "An F-22 Raptor." not in dropped


def test_documented_threshold_effects(real_captions):
    """The numbers quoted in CaptionQualityConfig's docstring, measured one threshold at a time."""
    stats = {name: [caption_stats(c) for c in caps] for name, caps in real_captions.items()}

    def n(name, pred):
        return sum(1 for s in stats[name] if pred(s))

    # min_words: 4 (OBELICS) vs 2.
    assert n("tux", lambda s: s["n_words"] < 4) == 401
    assert n("tux", lambda s: s["n_words"] < 2) == 11
    assert n("coco", lambda s: s["n_words"] < 2) == 0
    # A 5-character floor on the zh_CN captions.
    assert n("zh", lambda s: s["n_chars"] < 5) == 215
    # special characters: 0.3 (OBELICS) vs 0.45.
    assert (n("tux", lambda s: s["special_ratio"] > 0.3), n("zh", lambda s: s["special_ratio"] > 0.3)) == (26, 137)
    assert (n("coco", lambda s: s["special_ratio"] > 0.45), n("tux", lambda s: s["special_ratio"] > 0.45)) == (0, 0)
    # char repetition: 0.1 (OBELICS) vs 0.3.
    assert (n("coco", lambda s: s["char_repetition"] > 0.1), n("coco", lambda s: s["char_repetition"] > 0.3)) == (10, 0)
    # stop words: 0.3 (OBELICS) drops 46 English COCO captions, 0.1 from 8 words none.
    assert n("coco", lambda s: s["language"] == "en" and s["stopword_ratio"] < 0.3) == 46
    assert n("coco", lambda s: s["n_words"] >= 8 and s["language"] == "en" and s["stopword_ratio"] < 0.1) == 0
    # word 5-gram repetition: one COCO caption (0.154) is over OBELICS's 0.1, none over 0.2.
    assert (n("coco", lambda s: s["word_repetition"] > 0.1), n("coco", lambda s: s["word_repetition"] > 0.2)) == (1, 0)
    # lang-id reliability by length on the Tux Paint labels (lowercased, 'en' with p >= 0.8).
    ok = Counter()
    total = Counter()
    for s in stats["tux"]:
        k = min(s["n_words"], 6)
        total[k] += 1
        ok[k] += s["language"] == "en" and s["language_prob"] >= 0.8
    assert [(total[k], ok[k]) for k in (2, 3, 4, 5, 6)] == [(223, 17), (167, 51), (51, 27), (24, 21), (62, 59)]
    assert n("coco", lambda s: s["language"] == "en" and s["language_prob"] >= 0.8) == 786


def test_config_is_frozen_and_replaceable():
    cfg = replace(DEFAULT_CONFIG, allowed_languages=("en", "zh"))
    assert cfg == ZH_CONFIG
    with pytest.raises(FrozenInstanceError):
        DEFAULT_CONFIG.min_words = 3  # type: ignore[misc]
