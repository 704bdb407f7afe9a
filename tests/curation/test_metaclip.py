"""MetaCLIP: normalisation, matching, metadata build/save/load, counts, probabilities, balancing."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import pickle
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from curation import metaclip
from curation.metaclip import (
    Matcher,
    auto_threshold,
    balance_decision,
    build_metadata,
    count_matches,
    entry_probabilities,
    keep_probability,
    load_metadata,
    merge_counts,
    merge_entries,
    metadata_sources,
    metadata_version,
    normalize,
    normalize_entry,
    save_metadata,
    sidecar_url,
    wordnet_lemmas,
)
from curation.records import content_id, seeded_uniform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wordnet_dir() -> str:
    d = Path(metaclip.DEFAULT_WORDNET_DIR)
    if not (d / "data.noun").is_file():
        pytest.fail(f"WordNet database not found in {d}: apt-get install wordnet-base (or set VLM_WORDNET_DIR)")
    return str(d)


@pytest.fixture(scope="module")
def sources(wordnet_dir) -> list[metaclip.MetadataSource]:
    return metadata_sources(wordnet_dir=wordnet_dir)


@pytest.fixture(scope="module")
def metadata(sources) -> list[str]:
    return merge_entries(s.entries for s in sources)


@pytest.fixture(scope="module")
def matcher(metadata) -> Matcher:
    return Matcher(metadata)


@pytest.fixture(scope="module")
def tuxpaint(shared_data) -> list[dict]:
    path = shared_data / "image_caption/tuxpaint_stamps/captions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- normalisation and matching ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Cat's toy-box!", " a cat ' s toy box ! "),
        ("  Hello,\tworld.\n", " hello , world . "),
        ("guinea_fowl — T-Shirt", " guinea fowl t shirt "),
        ("我有iPhone手机。", " 我有 iphone 手机 。 "),
        ("ＬＩＮＵＸ", " linux "),  # NFKC folds fullwidth forms
        ("c++", " c + + "),
        ("zero\u200bwidth", " zerowidth "),  # format characters vanish
        ("", ""),
        (" \n ", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_entry_idempotent(metadata):
    sample = metadata[::997]
    assert all(normalize_entry(e) == e for e in sample)


HAND_ENTRIES = [
    "cat",
    "guinea fowl",
    "a",
    "hot dog",
    "青蛙",
    "t-shirt",
    "new york",
    "don't",
    "c++",
    "iphone",
    "dog",
    "蛙",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat.", ["cat", "a"]),
        ("concatenate", []),  # padding: no match inside a word
        ("Cats", []),  # no stemming
        ("A helmeted guinea-fowl", ["guinea fowl", "a"]),
        ("guinea_fowl", ["guinea fowl"]),
        ("A HOT DOG!", ["a", "hot dog", "dog"]),
        ("hotdog", []),
        ("the dog's bone", ["dog"]),
        ("一只青蛙。", ["青蛙", "蛙"]),  # Chinese: plain substrings
        ("青蛙王子", ["青蛙", "蛙"]),
        ("我有iphone手机", ["iphone"]),
        ("T shirt and T-SHIRT", ["t-shirt"]),
        ("I don't know", ["don't"]),
        ("c++ code", ["c++"]),
        ("I ❤ New York", ["new york"]),
        ("ＣＡＴ", ["cat"]),
        ("", []),
        (None, []),
    ],
)
def test_matcher_hand_made(text, expected):
    m = Matcher(HAND_ENTRIES)
    assert m.match(text) == sorted(HAND_ENTRIES.index(e) for e in expected)


def test_matcher_overlaps_and_duplicates():
    m = Matcher(["a", "a cat", "cat", "Cat", "", "!!"])
    # Overlapping matches are all reported; 'cat' and 'Cat' normalise alike and match together;
    # the empty entry never matches.
    assert m.match("A cat!!") == [0, 1, 2, 3, 5]
    assert m.match_entries("a cat") == ["a", "a cat", "cat", "Cat"]
    assert Matcher([]).match("a cat") == []


def test_matcher_pickles():
    small = Matcher(HAND_ENTRIES)
    clone = pickle.loads(pickle.dumps(small))
    assert clone.entries == small.entries
    for text in ["a cat.", "一只青蛙。", "guinea fowl", "T-shirt"]:
        assert clone.match(text) == small.match(text)
    assert len(pickle.dumps(small)) < 2000  # pickled as its entry list, rebuilt on load


# --- metadata --------------------------------------------------------------------------------


def test_wordnet_lemmas(wordnet_dir):
    lemmas = wordnet_lemmas(wordnet_dir)
    # Debian wordnet-base 1:3.0-37: lemma occurrences over all synsets of the 4 data files.
    assert len(lemmas) == 206_978
    s = set(lemmas)
    assert {"guinea fowl", "hot dog", "dog", "outback", "New York"} <= s
    assert not any("(" in x or "_" in x for x in lemmas)  # adjective markers and underscores gone


def test_build_metadata_sources(sources, metadata):
    assert [s.name for s in sources] == ["wordnet", "wordfreq_en", "wordfreq_zh"]
    # wordnet-base 1:3.0-37, wordfreq 3.1.1 ('large' lists).
    assert [len(merge_entries([s.entries])) for s in sources] == [146_761, 49_880, 46_346]
    assert len(metadata) == 215_987
    assert metadata == sorted(set(metadata)) and "" not in metadata
    assert {"guinea fowl", "hot dog", "青蛙", "the", "don ' t"} <= set(metadata)
    # English wordfreq tokens have letters and no CJK; Chinese ones have CJK.
    zh = sources[2].entries
    assert all(any(metaclip.is_cjk(ch) for ch in e) for e in zh)
    assert not any(metaclip.is_cjk(ch) for e in sources[1].entries for ch in e)


def test_build_metadata_deterministic(wordnet_dir, sources, metadata):
    again = build_metadata(wordnet_dir=wordnet_dir)
    assert again == metadata
    assert metadata_version(again) == metadata_version(metadata)
    # Source order does not matter either.
    assert merge_entries(s.entries for s in reversed(sources)) == metadata


def test_build_metadata_options(wordnet_dir, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("# my entries\nMiMo-VL\n\n  Tux Paint \n青蛙\n")
    only_extra = build_metadata(wordnet_dir=None, en_unigrams=0, zh=0, extra=str(extra))
    assert only_extra == ["mimo vl", "tux paint", "青蛙"]
    assert build_metadata(wordnet_dir=None, en_unigrams=0, zh=0, extra=["B", "a", "b"]) == ["a", "b"]
    small = build_metadata(wordnet_dir=None, en_unigrams=100, zh=100)
    # 100 English + 100 Chinese tokens, less the digits '1' and '3' of the Chinese top 100.
    assert len(small) == 198 and "the" in small and "的" in small


def test_save_load_metadata(tmp_path):
    sources = metadata_sources(wordnet_dir=None, en_unigrams=0, zh=0, extra=["cat", "Cat", "dog", "青蛙"])
    entries = merge_entries(s.entries for s in sources)
    url = str(tmp_path / "meta" / "metadata.txt")
    sidecar = save_metadata(url, entries, sources)
    assert Path(url).read_text(encoding="utf-8") == "cat\ndog\n青蛙\n"
    assert sidecar["version"] == metadata_version(entries) == hashlib.sha256("cat\ndog\n青蛙\n".encode()).hexdigest()
    assert sidecar["n_entries"] == 3
    assert sidecar["sources"] == [{"name": "extra", "path": None, "count": 3, "unique": 3}]
    assert json.loads(Path(sidecar_url(url)).read_text()) == sidecar
    assert load_metadata(url) == entries
    # A hand-edited file no longer matches its version.
    Path(url).write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sidecar version"):
        load_metadata(url)
    assert load_metadata(url, verify=False) == ["cat", "dog"]
    with pytest.raises(ValueError):
        save_metadata(url, ["Cat"])  # not normalised
    with pytest.raises(ValueError):
        save_metadata(url, ["dog", "cat"])  # not sorted
    # Any fsspec URL works (atomic writes through curation.storage).
    save_metadata("memory://metaclip-test/metadata.txt", entries, sources)
    assert load_metadata("memory://metaclip-test/metadata.txt") == entries


def test_cli_build(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("Tux Paint\n")
    out = tmp_path / "metadata.txt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation.metaclip",
            "build",
            "--out",
            str(out),
            "--no-wordnet",
            "--en-unigrams",
            "500",
            "--zh",
            "300",
            "--extra",
            str(extra),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(proc.stdout)
    sidecar = json.loads((tmp_path / "metadata.txt.json").read_text())
    assert report["version"] == sidecar["version"] == metadata_version(load_metadata(str(out)))
    names = [s["name"] for s in sidecar["sources"]]
    assert names == ["wordfreq_en", "wordfreq_zh", "extra"]
    assert sidecar["sources"][0]["package"] == "wordfreq" and sidecar["sources"][0]["top_n"] == 500
    assert sidecar["n_entries"] == len(load_metadata(str(out)))
    assert "tux paint" in load_metadata(str(out))


# --- real captions -----------------------------------------------------------------------------


def test_tuxpaint_matching(matcher, tuxpaint, wordnet_dir):
    """Exact match counts of the Tux Paint captions (English + zh_CN) with the default metadata."""
    en = [t["caption"] for t in tuxpaint]
    zh = [t["translations"]["zh_CN"] for t in tuxpaint if t["translations"].get("zh_CN")]
    en_matches = [matcher.match(c) for c in en]
    zh_matches = [matcher.match(c) for c in zh]
    assert sum(bool(m) for m in en_matches) == 538
    assert sum(bool(m) for m in zh_matches) == 467
    assert [c for c, m in zip(zh, zh_matches) if not m] == ["蚱蜢。"]  # grasshopper: not in the top 50k
    all_matches = en_matches + zh_matches
    assert sum(len(m) for m in all_matches) == 4994
    assert len({e for m in all_matches for e in m}) == 2212

    assert matcher.match_entries("A helmeted guinea fowl.") == ["a", "fowl", "guinea", "guinea fowl", "helmeted"]
    assert matcher.match_entries("Tux—the Linux mascot!") == ["linux", "mascot", "the", "tux"]
    assert matcher.match_entries("企鹅－Ｌｉｎｕｘ的吉祥物。") == [
        "linux",
        "企",
        "企鹅",
        "吉",
        "吉祥",
        "吉祥物",
        "物",
        "的",
        "祥",
        "鹅",
    ]

    # WordNet alone has lemmas, not inflections: only the plural "“Toilets”." finds nothing.
    wn = Matcher(merge_entries([wordnet_lemmas(wordnet_dir)]))
    assert [c for c in en if not wn.match(c)] == ["“Toilets”."]


def test_tuxpaint_balancing(matcher, tuxpaint):
    """End to end on the real captions (English + zh_CN): counts -> probabilities -> decisions."""
    records = [(content_id(t["caption"].encode(), t["image"]), t["caption"]) for t in tuxpaint]
    records += [
        (content_id(t["translations"]["zh_CN"].encode(), t["image"] + "#zh_CN"), t["translations"]["zh_CN"])
        for t in tuxpaint
        if t["translations"].get("zh_CN")
    ]
    matches = [matcher.match(text) for _, text in records]
    counts = count_matches(matches, len(matcher))
    index = {e: i for i, e in enumerate(matcher.entries)}
    assert [int(counts[index[e]]) for e in ("a", "the", "penguin", "的", "一只")] == [411, 50, 5, 72, 36]
    t = auto_threshold(len(records))
    assert (len(records), t) == (1006, 10)
    probs = entry_probabilities(counts, t)
    assert int((counts >= t).sum()) == 39  # head entries: matched by t or more captions
    assert int((probs < 1).sum()) == 28  # p = t / count < 1 once count > t
    v1 = [balance_decision(rid, m, probs, version=1) for (rid, _), m in zip(records, matches)]
    v2 = [balance_decision(rid, m, probs, version=2) for (rid, _), m in zip(records, matches)]
    expected = {None: 999, "balanced_out": 6, "no_metadata_match": 1}
    assert Counter(v.reason for v in v1) == expected
    assert Counter(v.reason for v in v2) == expected
    assert sum(a.keep != b.keep for a, b in zip(v1, v2)) == 2  # same odds, different draws
    assert sum(keep_probability(m, probs) for m in matches) == pytest.approx(998.17, abs=0.01)
    # A caption with a tail entry is always kept; one matching only 'a' (p = 10/411) rarely.
    penguin = next(i for i, (_, text) in enumerate(records) if text == "A Magellanic penguin.")
    assert v1[penguin].keep and v2[penguin].keep
    clownfish = next(i for i, (_, text) in enumerate(records) if text == "A clownfish.")
    assert matcher.match_entries("A clownfish.") == ["a"]
    assert v1[clownfish].reason == "balanced_out"


# --- counting, probabilities, balancing ------------------------------------------------------


def test_count_and_merge():
    matches = [[0, 2], [2], [], [1, 2]]
    assert count_matches(matches, 4).tolist() == [1, 1, 3, 0]
    assert count_matches([], 3).tolist() == [0, 0, 0]
    parts = [count_matches(matches[:1], 4), count_matches(matches[1:3], 4), count_matches(matches[3:], 4)]
    assert merge_counts(parts).tolist() == [1, 1, 3, 0]
    with pytest.raises(ValueError):
        count_matches([[4]], 4)
    with pytest.raises(ValueError):
        merge_counts([np.zeros(3), np.zeros(4)])


def test_entry_probabilities():
    probs = entry_probabilities(np.array([0, 5, 9, 10, 20, 1000]), t=10)
    assert probs.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.01]
    with pytest.raises(ValueError):
        entry_probabilities(np.array([1]), 0)


@pytest.mark.parametrize(
    "n_texts, kwargs, expected",
    [
        (400_000_000, {}, 20_000),
        (2_500_000_000, {}, 125_000),  # linear
        (2_500_000_000, {"exponent": math.log(8.5) / math.log(6.25)}, 170_000),  # MetaCLIP's two points
        (4_000_000, {}, 200),
        (1_000, {}, 10),  # floor
        (1_000, {"minimum": 1}, 1),
        (0, {"minimum": 0}, 0),
    ],
)
def test_auto_threshold(n_texts, kwargs, expected):
    assert auto_threshold(n_texts, **kwargs) == expected


def test_balance_decision_rules():
    probs = np.array([1.0, 0.5, 0.0, 0.0])
    assert balance_decision("r", [], probs).reason == "no_metadata_match"
    assert balance_decision("r", [], probs, version=2).reason == "no_metadata_match"
    assert balance_decision("r", [0, 2], probs).keep  # a tail entry keeps the text
    assert balance_decision("r", [0], probs, version=2).keep
    assert balance_decision("r", [2, 3], probs).reason == "balanced_out"  # p = 0 never passes
    assert balance_decision("r", [2, 3], probs, version=2).reason == "balanced_out"
    with pytest.raises(ValueError):
        balance_decision("r", [1], probs, version=3)
    # The exact draws: v1 one per (record, entry), v2 one per record.
    for rid in [f"rec-{i}" for i in range(200)]:
        assert balance_decision(rid, [1], probs).keep == (seeded_uniform(rid, "metaclip:1") < 0.5)
        assert balance_decision(rid, [1, 2], probs, version=2).keep == (seeded_uniform(rid, "metaclip:v2") < 0.5)


def test_keep_probability():
    probs = np.array([1.0, 0.5, 0.2, 0.0])
    assert keep_probability([], probs) == 0.0
    assert keep_probability([0], probs) == 1.0
    assert keep_probability([1, 2], probs) == pytest.approx(1 - 0.5 * 0.8)
    assert keep_probability([3], probs) == 0.0


def _synthetic_corpus():
    """Records matching one or two of 6 entries with known counts (no RNG: fully determined)."""
    single = {0: 40_000, 1: 10_000, 2: 4_000, 3: 500, 4: 999}
    records = []
    for e, n in single.items():
        records += [(f"syn-{e}-{i}", [e]) for i in range(n)]
    records += [(f"pair-{i}", [1, 2]) for i in range(6_000)]
    return records


@pytest.mark.parametrize("version", [1, 2])
def test_balancing_statistics(version):
    records = _synthetic_corpus()
    counts = count_matches((m for _, m in records), 6)
    assert counts.tolist() == [40_000, 16_000, 10_000, 500, 999, 0]
    t = 1_000
    probs = entry_probabilities(counts, t)
    kept = {rid for rid, m in records if balance_decision(rid, m, probs, version=version).keep}

    def check(n, p, observed):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(observed - n * p) <= 5 * sd, (n, p, observed)

    for e, n in {0: 40_000, 1: 10_000, 2: 4_000}.items():
        observed = sum(1 for i in range(n) if f"syn-{e}-{i}" in kept)
        check(n, probs[e], observed)
    # Head entry 0 (only single matches) ends at about t texts.
    assert abs(sum(1 for i in range(40_000) if f"syn-0-{i}" in kept) - t) <= 5 * math.sqrt(t)
    # Tail entries: every text kept.
    assert all(f"syn-3-{i}" in kept for i in range(500))
    assert all(f"syn-4-{i}" in kept for i in range(999))
    # Texts matching two head entries: kept with 1 - (1 - p1)(1 - p2).
    p_pair = 1 - (1 - probs[1]) * (1 - probs[2])
    check(6_000, p_pair, sum(1 for i in range(6_000) if f"pair-{i}" in kept))


def test_balancing_deterministic_and_order_free():
    records = _synthetic_corpus()[::20]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    counts_a = count_matches((m for _, m in records), 6)
    # Counts from shuffled, unevenly split partitions merge to the same totals.
    cuts = [0, 17, 400, 1_900, len(shuffled)]
    counts_b = merge_counts(count_matches((m for _, m in shuffled[a:b]), 6) for a, b in itertools.pairwise(cuts))
    assert counts_a.tolist() == counts_b.tolist()
    probs = entry_probabilities(counts_a, 50)
    for version in (1, 2):
        first = {rid: balance_decision(rid, m, probs, version=version) for rid, m in records}
        second = {rid: balance_decision(rid, m, probs, version=version) for rid, m in shuffled}
        assert first == second
        assert 0 < sum(v.keep for v in first.values()) < len(records)
