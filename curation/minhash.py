"""MinHash near-duplicate detection of documents, vectorised, with datasketch's exact semantics.

Shingles (one definition everywhere, ``shingles`` is the plain-Python reference):
  the text is lowercased (``str.lower``); words are maximal runs of word characters (what ``\\w``
  matches: ``str.isalnum()`` or ``_``), except that each Han / kana character is a word of its own
  (Chinese and Japanese have no spaces; same convention as ``curation.text_quality.words``).
  A shingle is ``n`` (5) consecutive words joined by single spaces, UTF-8 encoded; a document of
  1..n-1 words has one shingle (all its words); a document without words has none, its signature
  is all "empty" values, and it never pairs with anything.

Signatures are those of ``datasketch.MinHash(num_perm, seed, hashfunc=..., scheme=...)`` updated
with the document's shingles, bit for bit (tests assert it): the permutation parameters come from
``np.random.RandomState(seed)`` exactly as datasketch draws them, and the permutation is applied
as datasketch does for its two schemes:

- ``affine32`` (datasketch >= 2.0 default): ``h = fmix32(hashfunc(shingle))``, then
  ``a_k * h + b_k mod 2^32`` (odd ``a_k``: a bijection), uint32 signatures;
- ``legacy`` (datasketch < 2.0, and what datatrove-era pipelines stored):
  ``((a_k * h + b_k) mod 2^64) mod (2^61 - 1)`` truncated to 32 bits, uint64 signatures.

Hash functions (``hashfunc``; each also exposed as a scalar ``bytes -> int`` to hand to datasketch):

- ``"sha1"``: ``datasketch.hashfunc.sha1_hash32``, datasketch's default. One ``hashlib`` call per
  shingle is unavoidable, so it is the slowest here (still several times datasketch end to end).
- ``"xxh32"``: ``xxhash.xxh32_intdigest`` (seed 0). One C call per shingle, no digest object.
- ``"poly"`` (default): a polynomial hash of the shingle's code points,
  ``P = sum_j cp_j * B^j mod 2^64`` (``B`` odd), finalised with the 64-bit MurmurHash3 mixer and
  the top 32 bits kept (``poly_hash32``). Its point is that it needs no call per shingle at all:
  with prefix sums over a whole batch, every shingle's ``P`` is ``(S[e] - S[s]) * B^-s mod 2^64``
  (``B`` is invertible mod 2^64), so hashing is a handful of numpy operations over all shingles.
  Two different shingles collide only if their polynomials agree mod 2^64.

Tokenising is vectorised too: a batch of texts is joined and decoded once into a code-point array;
a lookup table classifies characters; word bounds, the space-joined normal form, the shingle spans
and (for the byte hashes) their UTF-8 offsets all come from array operations; the permutations
run on blocks of shingles with ``np.minimum.reduceat`` per document.

LSH: ``bands`` x ``rows`` = ``num_perm`` (datatrove: 14 x 8 = 112). Two documents with Jaccard
similarity ``s`` share at least one band with probability ``1 - (1 - s^rows)^bands``; the
similarity at which this rises steepest is about ``(1 / bands) ** (1 / rows)`` = 0.719 for 14 x 8
(``lsh_threshold``): pairs at 0.8 are found ~92% of the time, at 0.7 ~56%, at 0.5 ~5%
(``collision_probability``; ``bench/bench_minhash.py`` measures it on planted pairs).
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Callable, Sequence
from operator import methodcaller

import numpy as np

NUM_PERM = 112
BANDS = 14
ROWS = 8
NGRAM = 5
SEED = 1
HASHFUNCS = ("poly", "xxh32", "sha1")
SCHEMES = ("affine32", "legacy")

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_M64 = (1 << 64) - 1
POLY_BASE = 0x100000001B3  # FNV-1 64-bit prime: odd, so invertible mod 2^64
_POLY_BASE_INV = pow(POLY_BASE, -1, 1 << 64)

# Han (CJK unified ideographs, ext. A, compatibility, supplementary planes) and kana: one word per
# character. Same ranges as curation.text_quality's word definition.
CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3134F),
)
_CJK = "".join(f"{chr(a)}-{chr(b)}" for a, b in CJK_RANGES)
_WORD_RE = re.compile(rf"(?=[{_CJK}])\w|(?:(?![{_CJK}])\w)+")


# ----------------------------------------------------------------------------------------------
# Reference (plain Python) shingling and scalar hash functions


def words(text: str) -> list[str]:
    """Words of ``text`` as the module docstring defines them (reference implementation)."""
    return _WORD_RE.findall(text.lower())


def shingles(text: str, ngram: int = NGRAM) -> list[bytes]:
    """UTF-8 word ``ngram``-shingles of ``text`` in order, repeats kept (reference implementation)."""
    w = words(text)
    if not w:
        return []
    return [" ".join(w[i : i + ngram]).encode("utf-8") for i in range(max(1, len(w) - ngram + 1))]


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def poly_hash32(data: bytes) -> int:
    """The ``"poly"`` hash of one shingle: fmix64(sum cp_j * B^j mod 2^64) >> 32."""
    p, m = 0, 1
    for ch in data.decode("utf-8"):
        p = (p + ord(ch) * m) & _M64
        m = (m * POLY_BASE) & _M64
    return _fmix64(p) >> 32


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash: the first 4 bytes of SHA-1, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def xxh32(data: bytes) -> int:
    """xxHash32 of the bytes, seed 0."""
    import xxhash

    return xxhash.xxh32_intdigest(data)


SCALAR_HASHES: dict[str, Callable[[bytes], int]] = {"poly": poly_hash32, "sha1": sha1_hash32, "xxh32": xxh32}


def datasketch_minhash(text: str, num_perm: int = NUM_PERM, seed: int = SEED, ngram: int = NGRAM,
                       hashfunc: str = "poly", scheme: str = "affine32"):
    """The ``datasketch.MinHash`` of ``text`` with the same settings (the reference ``signatures`` matches)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=SCALAR_HASHES[hashfunc], scheme=scheme)
    m.update_batch(shingles(text, ngram))
    return m


# ----------------------------------------------------------------------------------------------
# Vectorised shingling


@functools.lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """uint8 class of every code point: 0 separator, 1 word character, 2 one-character word (CJK)."""
    # str.isalnum over all of Unicode once per process (~0.3 s); \w is isalnum or '_'
    table = np.frombuffer(
        "".join("1" if chr(c).isalnum() else "0" for c in range(0x110000)).encode("ascii"), dtype=np.uint8
    ) - ord("0")
    table = table.copy()
    table[ord("_")] = 1
    for a, b in CJK_RANGES:
        table[a : b + 1] = np.where(table[a : b + 1] > 0, 2, 0)
    return table


class _Powers:
    """B^i and B^-i mod 2^64 for i < n, grown on demand and shared by all batches of a process.

    The pair is replaced as one tuple, so a thread reading it never sees arrays of two sizes.
    """

    def __init__(self) -> None:
        self._arrays = (np.ones(1, np.uint64), np.ones(1, np.uint64))

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = self._arrays
        if pos.size < n:
            size = max(n, 2 * pos.size)
            pos, neg = np.ones(size, np.uint64), np.ones(size, np.uint64)
            # cumprod wraps modulo 2^64, which is exactly the arithmetic wanted
            np.cumprod(np.full(size - 1, POLY_BASE, np.uint64), out=pos[1:])
            np.cumprod(np.full(size - 1, _POLY_BASE_INV, np.uint64), out=neg[1:])
            self._arrays = (pos, neg)
        return pos[:n], neg[:n]


_POWERS = _Powers()


def _fmix64_np(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _fmix32_np(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def shingle_hashes(texts: Sequence[str], ngram: int = NGRAM, hashfunc: str = "poly") -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every shingle of every text, and each text's shingle count.

    Returns ``(hashes uint32 (S,), counts int64 (N,))``: text i owns ``hashes[offsets[i]:offsets[i+1]]``
    with ``offsets = [0, *cumsum(counts)]``, in order; equal to hashing ``shingles(text)``.
    """
    if hashfunc not in HASHFUNCS:
        raise ValueError(f"hashfunc must be one of {HASHFUNCS}")
    n_docs = len(texts)
    if n_docs == 0:
        return np.empty(0, np.uint32), np.zeros(0, np.int64)
    # one code-point array for the batch; a "\n" (not a word character) between texts keeps every
    # word inside its text. Encoding text by text keeps ASCII texts on str.lower's fast path.
    encoded = [t.lower().encode("utf-32-le", "surrogatepass") for t in texts]
    cp = np.frombuffer(b"\n\x00\x00\x00".join(encoded), dtype=np.uint32)
    doc_start = np.zeros(n_docs, np.int64)
    np.cumsum([len(b) // 4 + 1 for b in encoded[:-1]], out=doc_start[1:])

    # word bounds: a change of character class, or a one-character word (CJK), on either side
    cls = _char_classes()[cp]
    change = cls[1:] != cls[:-1]
    single = cls == 2
    isw = cls > 0
    w_start = np.flatnonzero(isw & (np.concatenate(([True], change)) | single))
    w_end = np.flatnonzero(isw & (np.concatenate((change, [True])) | single)) + 1
    w_len = w_end - w_start
    n_words = w_start.size
    first_word = np.searchsorted(w_start, doc_start)
    words_per_doc = np.diff(np.append(first_word, n_words))

    # word offsets in the normal form (every word followed by one space, texts back to back)
    out_start = np.zeros(n_words + 1, np.int64)
    np.cumsum(w_len + 1, out=out_start[1:])
    total = int(out_start[-1])
    out_start = out_start[:-1]

    # shingle = words i..last of one text (last = i + n - 1; texts shorter than n: all their words)
    counts = np.where(words_per_doc >= ngram, words_per_doc - ngram + 1, np.minimum(words_per_doc, 1))
    sh_doc = np.repeat(np.arange(n_docs), counts)
    sh_off = np.zeros(n_docs, np.int64)
    np.cumsum(counts[:-1], out=sh_off[1:])
    sh_first = first_word[sh_doc] + (np.arange(sh_doc.size) - sh_off[sh_doc])
    sh_last = np.minimum(sh_first + (ngram - 1), first_word[sh_doc] + words_per_doc[sh_doc] - 1)
    counts = counts.astype(np.int64)

    if hashfunc == "poly":
        pos, neg = _POWERS.get(max(cp.size, total) + 1)
        # polynomial of each word from prefix sums over the raw code points ...
        prefix = np.zeros(cp.size + 1, np.uint64)
        np.cumsum(cp * pos[: cp.size], out=prefix[1:])
        hw = (prefix[w_end] - prefix[w_start]) * neg[w_start]
        # ... placed at the word's offset in the normal form, with its trailing space
        term = (hw + np.uint64(32) * pos[w_len]) * pos[out_start]
        q = np.zeros(n_words + 1, np.uint64)
        np.cumsum(term, out=q[1:])
        p = (q[sh_last] - q[sh_first] + hw[sh_last] * pos[out_start[sh_last]]) * neg[out_start[sh_first]]
        return (_fmix64_np(p) >> np.uint64(32)).astype(np.uint32), counts

    # byte hashes: the normal form as UTF-8, shingles sliced out of it, one C-level call each
    gather = np.repeat(w_start - out_start, w_len + 1) + np.arange(total, dtype=np.int64)
    norm = cp[np.minimum(gather, cp.size - 1)]
    norm[out_start + w_len] = 32
    width = 1 + (norm >= 0x80).astype(np.int64) + (norm >= 0x800) + (norm >= 0x10000)
    off = np.zeros(total + 1, np.int64)
    np.cumsum(width, out=off[1:])
    s = off[out_start[sh_first]]
    e = off[out_start[sh_last] + w_len[sh_last]]
    buf = norm.tobytes().decode("utf-32-le").encode("utf-8")
    pieces = map(buf.__getitem__, map(slice, s.tolist(), e.tolist()))
    if hashfunc == "sha1":
        digests = b"".join(map(methodcaller("digest"), map(hashlib.sha1, pieces)))
        h = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :4].copy().view("<u4").ravel()
    else:
        import xxhash

        h = np.fromiter(map(xxhash.xxh32_intdigest, pieces), dtype=np.uint32, count=s.size)
    return h.astype(np.uint32), counts


# ----------------------------------------------------------------------------------------------
# Signatures


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) as datasketch draws them from ``np.random.RandomState(seed)`` for ``scheme``."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array(
            [(gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64)) for _ in range(num_perm)],
            dtype=np.uint64,
        ).T
        return ab[0].copy(), ab[1].copy()
    if scheme != "affine32":
        raise ValueError(f"scheme must be one of {SCHEMES}")
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def empty_value(scheme: str = "affine32") -> int:
    """Signature value of a document without shingles (datasketch's initial hash value)."""
    return (1 << 32) - 1


def signatures_from_hashes(
    hashes: np.ndarray, counts: np.ndarray, num_perm: int = NUM_PERM, seed: int = SEED,
    scheme: str = "affine32", block: int = 8192,
) -> np.ndarray:
    """Min over each document's shingle hashes of every permutation: (N, num_perm) signatures.

    Works on (num_perm, block) tiles: permutations along rows, shingles along the long contiguous
    axis, so numpy's SIMD loops run over ``block`` elements (4x faster here than the transposed
    tile), and ``np.minimum.reduceat`` takes each document's minimum inside a tile.
    """
    a, b = permutations(num_perm, seed, scheme)
    legacy = scheme == "legacy"
    dtype = np.uint64 if legacy else np.uint32
    n_docs = counts.size
    sig_t = np.full((num_perm, n_docs), empty_value(scheme), dtype=dtype)
    if hashes.size == 0:
        return np.ascontiguousarray(sig_t.T)
    h = hashes.astype(np.uint64) if legacy else _fmix32_np(hashes.astype(np.uint32, copy=True))
    a_col, b_col = a[:, None], b[:, None]
    tile = np.empty((num_perm, min(block, hashes.size)), dtype=dtype)
    nz = np.flatnonzero(counts)  # documents with shingles; their hashes are contiguous, in order
    nz_start = np.zeros(n_docs + 1, np.int64)
    np.cumsum(counts, out=nz_start[1:])
    nz_start = nz_start[nz]
    for lo in range(0, hashes.size, block):
        hi = min(hashes.size, lo + block)
        x = tile[:, : hi - lo]
        np.multiply(a_col, h[None, lo:hi], out=x)  # wraps mod 2^32 (affine32) / 2^64 (legacy), as datasketch's
        x += b_col
        if legacy:
            # x mod (2^61 - 1) without a division: 2^61 = 1 (mod p), so fold the top bits down
            x = (x & _MERSENNE) + (x >> np.uint64(61))
            x -= np.where(x >= _MERSENNE, _MERSENNE, np.uint64(0))
            x &= _MAX32
        # the documents (or parts of documents) inside this tile
        i0 = np.searchsorted(nz_start, lo, side="right") - 1
        i1 = np.searchsorted(nz_start, hi, side="left")
        docs = nz[i0:i1]
        mins = np.minimum.reduceat(x, np.maximum(nz_start[i0:i1], lo) - lo, axis=1)
        sig_t[:, docs] = np.minimum(sig_t[:, docs], mins)
    return np.ascontiguousarray(sig_t.T)


def signatures(
    texts: Sequence[str], num_perm: int = NUM_PERM, seed: int = SEED, ngram: int = NGRAM,
    hashfunc: str = "poly", scheme: str = "affine32", batch: int = 512,
) -> np.ndarray:
    """MinHash signatures of ``texts``: (N, num_perm), uint32 (affine32) or uint64 (legacy).

    Row i equals ``datasketch.MinHash(num_perm, seed, hashfunc=SCALAR_HASHES[hashfunc],
    scheme=scheme)`` updated with ``shingles(texts[i], ngram)``. Texts are processed ``batch`` at a
    time to bound memory: peak ~55 bytes per character of a batch with ``poly``, ~90 with the byte
    hashes (measured: 512 news articles, 2.3 M characters, 126 MB / 199 MB).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}")
    parts = []
    for lo in range(0, len(texts), batch):
        h, c = shingle_hashes(texts[lo : lo + batch], ngram, hashfunc)
        parts.append(signatures_from_hashes(h, c, num_perm, seed, scheme))
    if not parts:
        return np.empty((0, num_perm), dtype=np.uint64 if scheme == "legacy" else np.uint32)
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------
# LSH banding, candidates, clusters


def lsh_threshold(bands: int = BANDS, rows: int = ROWS) -> float:
    """Approximate similarity threshold of a bands x rows LSH: (1/bands)^(1/rows)."""
    return (1.0 / bands) ** (1.0 / rows)


def collision_probability(s: float | np.ndarray, bands: int = BANDS, rows: int = ROWS) -> float | np.ndarray:
    """Probability that two sets of Jaccard similarity ``s`` share at least one band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def band_keys(sig: np.ndarray, bands: int = BANDS, rows: int = ROWS) -> np.ndarray:
    """(N, bands) uint64 keys: a 64-bit hash of each band's ``rows`` values and the band index.

    Two documents share key ``k`` in some column iff (up to 2^-64 hash collisions) they agree on
    every value of that band. The band index is mixed in, so all keys can be grouped together in
    one Beam ``GroupByKey`` without pairing band 3 of one document with band 5 of another. Empty
    documents (no shingles) get key 0 in every band: ``candidate_pairs`` ignores it.
    """
    sig = np.asarray(sig)
    n, p = sig.shape
    if bands * rows > p:
        raise ValueError(f"bands * rows = {bands * rows} > num_perm = {p}")
    v = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.broadcast_to(np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), (n, bands)).copy()
    with np.errstate(over="ignore"):
        for r in range(rows):
            h = _fmix64_np(h ^ v[:, :, r]) + np.uint64(r + 1)
    h[h == 0] = 1  # 0 is reserved for empty documents
    h[is_empty(sig)] = 0
    return h


def is_empty(sig: np.ndarray) -> np.ndarray:
    """True for documents without shingles (every value at its initial maximum)."""
    sig = np.asarray(sig)
    return np.all(sig == (1 << 32) - 1, axis=1)


def candidate_pairs(keys: np.ndarray, complete: bool = False) -> np.ndarray:
    """Pairs (i, j), i < j, of documents sharing a band key: (P, 2) int64, unique, sorted.

    Sort-based: each band column is sorted and runs of equal keys form buckets. By default a bucket
    of m documents gives the m - 1 pairs (first, other): a spanning tree of the bucket, so connected
    components (``curation.neardup.clusters``) are those of all colliding pairs while the pair count
    stays linear even for thousands of copies of one page. ``complete=True`` gives every pair of
    every bucket (to verify pairs one by one). Key 0 (empty documents) never pairs.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.ndim != 2:
        raise ValueError("keys must be (N, bands)")
    out_i, out_j = [], []
    for col in keys.T:
        order = np.argsort(col, kind="stable")
        sk = col[order]
        same = (sk[1:] == sk[:-1]) & (sk[1:] != 0)
        if not same.any():
            continue
        # run starts and run ids over the sorted column
        run_start = np.concatenate(([True], ~same))
        run_id = np.cumsum(run_start) - 1
        first = np.flatnonzero(run_start)
        if not complete:
            member = np.flatnonzero(~run_start)
            out_i.append(order[first[run_id[member]]])
            out_j.append(order[member])
        else:
            sizes = np.diff(np.append(first, sk.size))
            for f, m in zip(first[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
                ii, jj = np.triu_indices(m, 1)
                out_i.append(order[f + ii])
                out_j.append(order[f + jj])
    if not out_i:
        return np.empty((0, 2), np.int64)
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)
    return np.unique(pairs, axis=0)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Share of equal signature values (datasketch ``MinHash.jaccard``), row-wise for 2-D input.

    Two empty documents estimate 1.0, as datasketch's does; callers drop them first.
    """
    a, b = np.asarray(sig_a), np.asarray(sig_b)
    eq = (a == b).mean(axis=-1)
    return float(eq) if eq.ndim == 0 else eq


def pair_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each pair (P,) from the signature matrix."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)


def near_duplicates(
    sig: np.ndarray,
    lengths: np.ndarray,
    record_ids: np.ndarray | None = None,
    bands: int = BANDS,
    rows: int = ROWS,
    min_jaccard: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters and the kept documents: ``(labels, rep, keep)``.

    Candidates are documents sharing a band (``candidate_pairs``); with ``min_jaccard`` only pairs
    whose estimated Jaccard reaches it are linked (every bucket pair is then checked). Clusters are
    connected components (``curation.neardup.clusters``: label = smallest member index).
    Representative rule (``curation.neardup.choose_representatives``): the longest document
    (``lengths``, e.g. words or characters), then the smallest record id, then the smallest index.
    ``keep[i]`` is True for each cluster's representative and every singleton.
    """
    from curation.neardup import choose_representatives, clusters

    keys = band_keys(sig, bands, rows)
    pairs = candidate_pairs(keys, complete=min_jaccard is not None)
    if min_jaccard is not None and pairs.size:
        pairs = pairs[pair_jaccard(sig, pairs) >= min_jaccard]
    labels = clusters(len(sig), pairs)
    rep, keep = choose_representatives(labels, caption_len=np.asarray(lengths), record_ids=record_ids)
    return labels, rep, keep


def representative_key(doc: dict) -> tuple:
    """Document representative rule, smallest wins: most text characters (``n_chars``), then the
    smallest id (the rule ``near_duplicates`` applies to arrays)."""
    return (-(doc["n_chars"] or 0), doc["id"])
