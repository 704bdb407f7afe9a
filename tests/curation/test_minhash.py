"""MinHash: bit-exact with datasketch, shingling, LSH banding, candidates, clusters."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from datasketch import MinHash

from curation import minhash as mh


@pytest.fixture(scope="module")
def articles(shared_data) -> list[str]:
    gt = json.loads((shared_data / "web" / "article_extraction_benchmark" / "ground-truth.json").read_text())
    return [gt[k]["articleBody"] for k in sorted(gt)]


EDGE_TEXTS = [
    "",
    "  ...  !!! ",
    "one two",
    "a b c d e",
    "Hello, World! Foo bar_baz 42 x",
    "中文的文本，没有空格。日本語のテキストも",
    "İstanbul ŞEHİR straße ΣΊΣΥΦΟΣ",
    "emoji 😀 test \ud800 lone surrogate, Ⅻ roman, ٣ digit",
    "tab\tand\nnewline\u00a0nbsp\u3000ideographic space",
    "mixed中文and english words here",
]


@pytest.mark.parametrize("scheme", mh.SCHEMES)
@pytest.mark.parametrize("hashfunc", mh.HASHFUNCS)
def test_signatures_identical_to_datasketch(articles, hashfunc, scheme):
    texts = articles[:12] + EDGE_TEXTS
    sig = mh.signatures(texts, hashfunc=hashfunc, scheme=scheme, batch=7)
    ref = np.array([mh.datasketch_minhash(t, hashfunc=hashfunc, scheme=scheme).hashvalues for t in texts])
    assert sig.dtype == (np.uint64 if scheme == "legacy" else np.uint32)
    assert sig.shape == (len(texts), 112)
    assert np.array_equal(sig, ref)


def test_default_is_datasketch_default_scheme(articles):
    """sha1 + affine32 is what plain ``MinHash(num_perm=112, seed=1)`` computes."""
    texts = articles[20:25]
    sig = mh.signatures(texts, hashfunc="sha1")
    for t, row in zip(texts, sig):
        m = MinHash(num_perm=112, seed=1)
        m.update_batch(mh.shingles(t))
        assert np.array_equal(row, m.hashvalues)


def test_random_unicode_identical_to_datasketch():
    rng = random.Random(7)
    alphabet = (
        [chr(c) for c in range(32, 127)] * 3
        + [chr(c) for c in range(0x3040, 0x3100)]  # kana, incl. non-word marks such as U+30FB
        + [chr(c) for c in range(0x4E00, 0x4E30)]
        + list("\u0130\u0307\u0300\u00df\u1e9e\u03a3_\u0660\u2160\ud800\U0001f600\U00020000\uac00\u0e01\u200b\u00a0\t\n\u3000")
    )
    texts = ["".join(rng.choice(alphabet) if rng.random() < 0.7 else " " for _ in range(rng.choice([0, 3, 9, 40, 150]))) for _ in range(150)]
    for hashfunc in ("poly", "xxh32"):
        sig = mh.signatures(texts, hashfunc=hashfunc, batch=16)
        ref = np.array([mh.datasketch_minhash(t, hashfunc=hashfunc).hashvalues for t in texts])
        assert np.array_equal(sig, ref)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World! Foo bar_baz 42 x", [b"hello world foo bar_baz 42", b"world foo bar_baz 42 x"]),
        ("Two words.", [b"two words"]),
        ("", []),
        ("... --- !!!", []),
        ("中文abc def", ["中 文 abc def".encode()]),
        ("café-crème  AU  lait, s'il vous plaît", ["café crème au lait s".encode(), "crème au lait s il".encode(),
                                                   "au lait s il vous".encode(), "lait s il vous plaît".encode()]),
    ],
)
def test_shingles(text, expected):
    assert mh.shingles(text) == expected


def test_shingle_hashes_counts_and_order(articles):
    texts = ["", "a b", "a b c d e f g"] + articles[:3]
    h, counts = mh.shingle_hashes(texts, hashfunc="xxh32")
    import xxhash

    expected = [xxhash.xxh32_intdigest(s) for t in texts for s in mh.shingles(t)]
    assert counts.tolist() == [len(mh.shingles(t)) for t in texts]
    assert counts[:3].tolist() == [0, 1, 3]
    assert h.tolist() == expected


def test_poly_hash_scalar_matches_vectorised():
    h, _ = mh.shingle_hashes(["Alpha beta gamma delta epsilon zeta", "中文 ok"], hashfunc="poly")
    assert h.tolist() == [mh.poly_hash32(s) for s in (b"alpha beta gamma delta epsilon", b"beta gamma delta epsilon zeta",
                                                       "中 文 ok".encode())]


def test_block_and_batch_sizes_do_not_change_signatures(articles):
    texts = articles[:9]
    h, c = mh.shingle_hashes(texts)
    full = mh.signatures_from_hashes(h, c)
    assert np.array_equal(mh.signatures_from_hashes(h, c, block=5), full)
    assert np.array_equal(mh.signatures(texts, batch=2), full)
    for scheme in mh.SCHEMES:
        assert np.array_equal(mh.signatures_from_hashes(h, c, scheme=scheme, block=37),
                              mh.signatures_from_hashes(h, c, scheme=scheme))


def test_lsh_threshold_and_curve():
    assert round(mh.lsh_threshold(14, 8), 4) == 0.719
    p = mh.collision_probability(np.array([0.5, 0.7, 0.8, 0.9]))
    assert np.round(p, 3).tolist() == [0.053, 0.565, 0.924, 1.0]


def test_empty_documents_never_pair():
    sig = mh.signatures(["", "  ", "!!!", "real words here for once"])
    assert mh.is_empty(sig).tolist() == [True, True, True, False]
    assert np.all(sig[:3] == 0xFFFFFFFF)
    keys = mh.band_keys(sig)
    assert np.all(keys[:3] == 0) and np.all(keys[3] != 0)
    assert mh.candidate_pairs(keys).shape == (0, 2)


def test_band_keys_follow_band_contents():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32 - 1, size=112, dtype=np.uint64).astype(np.uint32)
    other = base.copy()
    other[3 * 8 + 5] ^= 1  # one value of band 3
    sig = np.stack([base, base, other, base[::-1].copy()])
    keys = mh.band_keys(sig)
    assert keys.shape == (4, 14) and keys.dtype == np.uint64
    assert np.array_equal(keys[0], keys[1])
    assert (keys[0] == keys[2]).tolist() == [b != 3 for b in range(14)]
    # the band index is part of the key: equal band contents in different bands give different keys
    same = np.tile(base[:8], 14)
    k = mh.band_keys(same[None, :])[0]
    assert len(set(k.tolist())) == 14


def test_candidate_pairs_star_and_complete():
    keys = np.array(
        [[5, 1], [5, 2], [5, 3], [7, 3], [0, 0], [0, 0], [9, 1]],
        dtype=np.uint64,
    )
    # band 0: {0,1,2} share 5; band 1: {0,6} share 1, {2,3} share 3; key 0 is "empty"
    assert mh.candidate_pairs(keys).tolist() == [[0, 1], [0, 2], [0, 6], [2, 3]]
    assert mh.candidate_pairs(keys, complete=True).tolist() == [[0, 1], [0, 2], [0, 6], [1, 2], [2, 3]]


def test_jaccard_estimate_matches_datasketch(articles):
    a, b = articles[0], articles[0][: len(articles[0]) // 2]
    sig = mh.signatures([a, b], hashfunc="sha1")
    m1, m2 = (mh.datasketch_minhash(t, hashfunc="sha1") for t in (a, b))
    assert mh.jaccard_estimate(sig[0], sig[1]) == m1.jaccard(m2)
    assert mh.pair_jaccard(sig, np.array([[0, 1]])).tolist() == [m1.jaccard(m2)]


def _drop_words(text: str, every: int) -> str:
    return " ".join(w for i, w in enumerate(text.split()) if i % every)


def test_near_duplicates_on_real_articles(articles):
    texts = list(articles[:40])
    texts.append(texts[3])  # 40: exact copy of 3
    texts.append(_drop_words(texts[5], 60))  # 41: ~2% of words deleted from 5
    texts.append(texts[7] + " Read more: subscribe to our newsletter.")  # 42: 7 plus a footer
    texts.append(_drop_words(texts[9], 3))  # 43: a third of the words gone: not a near-dup
    sig = mh.signatures(texts)
    lengths = np.array([len(mh.words(t)) for t in texts])
    labels, rep, keep = mh.near_duplicates(sig, lengths)
    groups = {}
    for i, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(i)
    assert sorted(g for g in groups.values() if len(g) > 1) == [[3, 40], [5, 41], [7, 42]]
    # representatives: the longest document, then the smallest index
    assert rep[[3, 40, 5, 41, 7, 42, 9, 43]].tolist() == [3, 3, 5, 5, 42, 42, 9, 43]
    assert int(keep.sum()) == len(texts) - 3
    assert keep[42] and not keep[7] and not keep[40] and not keep[41]
    # verification with a Jaccard floor keeps the same clusters here
    labels_v, _, _ = mh.near_duplicates(sig, lengths, min_jaccard=0.5)
    assert np.array_equal(labels_v, labels)


def test_bad_arguments():
    with pytest.raises(ValueError):
        mh.signatures(["x"], hashfunc="md5")
    with pytest.raises(ValueError):
        mh.signatures(["x"], scheme="affine64")
    with pytest.raises(ValueError):
        mh.band_keys(np.zeros((2, 100), np.uint32), bands=14, rows=8)
    assert mh.signatures([]).shape == (0, 112)
