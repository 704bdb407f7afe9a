"""MetaCLIP curation: metadata entries, substring matching, entry counts and balancing.

MetaCLIP (Xu et al. 2023, "Demystifying CLIP Data") balances image-text pairs over a list of
metadata entries: each text is matched against the entries, matches are counted per entry over the
whole corpus, and a text is sampled with a probability that caps every "head" entry at about ``t``
texts while keeping every "tail" entry (fewer than ``t`` matches) whole. MetaCLIP 2 (2025,
"worldwide") keeps the same algorithm for many languages; MiMo-VL uses English and Chinese entries.

Steps and where they run:

- ``build_metadata`` (once; a versioned asset users can replace): WordNet lemmas + frequent English
  unigrams + frequent Chinese words + optional user entries, normalised, deduplicated, sorted.
- ``Matcher.match`` (per text, the hot path): one Aho-Corasick pass over the normalised text.
- ``count_matches`` / ``merge_counts`` (a global combine): texts matched per entry.
- ``entry_probabilities`` + ``balance_decision`` (per text): seeded Bernoulli draws.

Matching. Texts and entries go through the same ``normalize``; an entry matches where its
normalised form occurs in the normalised text as a sequence of whole tokens: Latin-script entries
are space-padded (``' cat '`` matches "a cat." but not "concatenate"), while the sides of an entry
that are CJK characters (Han, kana) are not padded, because Chinese and Japanese are written
without spaces between words: '青蛙' matches inside '一只青蛙。' and '青蛙王子' (plain substring
matching; without a word segmenter there is no word boundary to require). The price is that
single-character Chinese entries ('的', '青') match very often; their counts are high, so balancing
gives them small probabilities, exactly like 'a' and 'the' in English.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ahocorasick
import numpy as np

from curation import storage
from curation.records import KEEP, Verdict, drop, seeded_uniform

DEFAULT_WORDNET_DIR = os.environ.get("VLM_WORDNET_DIR", "/usr/share/wordnet")
DEFAULT_EN_UNIGRAMS = 50_000
DEFAULT_ZH = 50_000
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Bumped whenever ``normalize`` changes: a metadata file is only valid with the normalisation that
# built it (the sidecar records this).
NORMALIZATION_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Normalisation

_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# A boundary between a CJK character and a non-space non-CJK character gets a space, so that
# Latin words inside Chinese text ("我有iphone手机") are tokens like any other.
_CJK_BOUNDARY_RE = re.compile(rf"(?<=[{_CJK_CLASS}])(?=[^\s{_CJK_CLASS}])|(?<=[^\s{_CJK_CLASS}])(?=[{_CJK_CLASS}])")


class _SpacingTable(dict):
    """``str.translate`` table filled on first sight of each character (Unicode is too big to prebuild).

    Punctuation and symbols become separate tokens (MetaCLIP's "punctuation spaced out"); dashes and
    connectors (Pd, Pc: '-', '_', '—') become plain spaces, so "guinea-fowl", "guinea_fowl" and
    "guinea fowl" all match the entry 'guinea fowl'; control characters become spaces and format
    characters (zero-width joiners, BOM) disappear. Everything else maps to itself.
    """

    def __missing__(self, cp: int) -> Any:
        cat = unicodedata.category(chr(cp))
        if cat in ("Pd", "Pc", "Cc", "Zs", "Zl", "Zp"):
            value: Any = " "
        elif cat == "Cf":
            value = ""
        elif cat[0] in "PS":
            value = f" {chr(cp)} "
        else:
            value = cp
        self[cp] = value
        return value


_SPACING = _SpacingTable()


def is_cjk(ch: str) -> bool:
    """Whether ``ch`` is a Han or kana character (scripts written without word spaces)."""
    return _CJK_RE.match(ch) is not None


def normalize(text: str) -> str:
    """Matching form of a text: NFKC, lowercase, punctuation spaced out, whitespace collapsed, padded.

    NFKC folds fullwidth forms common in Chinese text ('Ｌｉｎｕｘ' -> 'linux'). The result starts
    and ends with one space (``''`` for a text with no tokens), so ``' cat '`` in it means the whole
    token 'cat'. Example: ``normalize("A Cat's toy-box!") == " a cat ' s toy box ! "``.
    """
    t = unicodedata.normalize("NFKC", text).lower().translate(_SPACING)
    if _CJK_RE.search(t):
        t = _CJK_BOUNDARY_RE.sub(" ", t)
    t = " ".join(t.split())
    return f" {t} " if t else ""


def normalize_entry(entry: str) -> str:
    """Stored form of a metadata entry: ``normalize`` without the padding ('' means unusable)."""
    return normalize(entry).strip()


def _entry_key(entry: str) -> str:
    """Automaton key of a normalised entry: padded on each side that is not a CJK character."""
    left = "" if is_cjk(entry[0]) else " "
    right = "" if is_cjk(entry[-1]) else " "
    return f"{left}{entry}{right}"


# ---------------------------------------------------------------------------------------------
# Metadata sources


def wordnet_lemmas(wordnet_dir: str = DEFAULT_WORDNET_DIR) -> list[str]:
    """Every lemma name of every WordNet synset, underscores as spaces, in file order (with repeats).

    Reads the WordNet database files (``data.noun`` etc., Debian package ``wordnet-base``) directly.
    A data line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] ...`` with
    ``w_cnt`` in hex; licence lines start with spaces. Adjective markers such as ``(a)``, ``(p)``
    and ``(ip)`` are removed. Multi-word lemmas ("guinea fowl", "hot dog") are WordNet's
    collocations: they stand in for MetaCLIP's high-PMI Wikipedia bigrams, which are not available
    offline.
    """
    out: list[str] = []
    marker = re.compile(r"\((?:a|p|ip)\)$")
    for name in WORDNET_FILES:
        path = os.path.join(wordnet_dir, name)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split(" ", 4 + 2 * 256)
                n = int(fields[3], 16)
                for i in range(n):
                    out.append(marker.sub("", fields[4 + 2 * i]).replace("_", " "))
    return out


def wordnet_info(wordnet_dir: str = DEFAULT_WORDNET_DIR) -> dict[str, Any]:
    """Provenance of the WordNet files: WordNet version from the licence header, Debian package version."""
    version = None
    with open(os.path.join(wordnet_dir, "data.noun"), encoding="utf-8") as f:
        for line in itertools.islice(f, 40):
            m = re.search(r"WordNet (\d+(?:\.\d+)*) Copyright", line)
            if m:
                version = m.group(1)
                break
    package_version = None
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "wordnet-base"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            package_version = proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "path": wordnet_dir,
        "wordnet_version": version,
        "package": "wordnet-base",
        "package_version": package_version,
    }


def wordfreq_top(lang: str, n: int) -> list[str]:
    """The ``n`` most frequent words of wordfreq's 'large' list for ``lang``, most frequent first.

    The list is static data shipped in the wheel (no tokeniser needed to read it). English tokens
    must contain a letter and no CJK character; Chinese tokens must contain a CJK character (the
    Chinese list also holds digits and Latin words, which the English list covers).
    """
    import wordfreq

    words = wordfreq.top_n_list(lang, n, wordlist="large")
    if lang == "zh":
        return [w for w in words if _CJK_RE.search(w)]
    return [w for w in words if any(ch.isalpha() for ch in w) and not _CJK_RE.search(w)]


def read_entries_file(url: str) -> list[str]:
    """User entries: one per line, UTF-8; blank lines and lines starting with '#' are ignored."""
    text = storage.read_bytes(url).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@dataclass
class MetadataSource:
    """Entries from one source (raw, as the source spells them) and their provenance."""

    name: str
    entries: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def metadata_sources(
    *,
    wordnet_dir: str | None = DEFAULT_WORDNET_DIR,
    en_unigrams: int = DEFAULT_EN_UNIGRAMS,
    zh: int = DEFAULT_ZH,
    extra: str | Sequence[str] | None = None,
) -> list[MetadataSource]:
    """The sources ``build_metadata`` merges; a source is skipped when its size is 0 / dir is None.

    ``extra`` is a file URL (one entry per line) or a list of entries.
    """
    sources: list[MetadataSource] = []
    if wordnet_dir:
        sources.append(MetadataSource("wordnet", wordnet_lemmas(wordnet_dir), wordnet_info(wordnet_dir)))
    if en_unigrams > 0 or zh > 0:
        wf = {"package": "wordfreq", "package_version": importlib.metadata.version("wordfreq"), "wordlist": "large"}
        if en_unigrams > 0:
            sources.append(MetadataSource("wordfreq_en", wordfreq_top("en", en_unigrams), {**wf, "top_n": en_unigrams}))
        if zh > 0:
            sources.append(MetadataSource("wordfreq_zh", wordfreq_top("zh", zh), {**wf, "top_n": zh}))
    if extra:
        if isinstance(extra, str):
            sources.append(MetadataSource("extra", read_entries_file(extra), {"path": extra}))
        else:
            sources.append(MetadataSource("extra", list(extra), {"path": None}))
    return sources


def merge_entries(entry_lists: Iterable[Iterable[str]]) -> list[str]:
    """Normalise, drop empty entries, deduplicate and sort (code-point order): a deterministic list."""
    merged = {normalize_entry(e) for entries in entry_lists for e in entries}
    merged.discard("")
    return sorted(merged)


def build_metadata(
    *,
    wordnet_dir: str | None = DEFAULT_WORDNET_DIR,
    en_unigrams: int = DEFAULT_EN_UNIGRAMS,
    zh: int = DEFAULT_ZH,
    extra: str | Sequence[str] | None = None,
) -> list[str]:
    """The metadata entries: WordNet lemmas, top English unigrams, top Chinese words, extra entries.

    MetaCLIP's 500k entries were WordNet synsets, Wikipedia unigrams (count >= 100), high-PMI
    Wikipedia bigrams and Wikipedia article titles; offline we use WordNet lemmas (its multi-word
    collocations standing in for the bigrams), wordfreq's most frequent English words (wordfreq is
    built largely from Wikipedia, subtitles, news and web text) and wordfreq's Chinese list.
    """
    sources = metadata_sources(wordnet_dir=wordnet_dir, en_unigrams=en_unigrams, zh=zh, extra=extra)
    return merge_entries(s.entries for s in sources)


def metadata_bytes(entries: Sequence[str]) -> bytes:
    """The metadata file content: one entry per line, UTF-8, trailing newline."""
    return "".join(f"{e}\n" for e in entries).encode("utf-8")


def metadata_version(entries: Sequence[str]) -> str:
    """sha256 (hex) of the metadata file content: the version of a metadata list."""
    return hashlib.sha256(metadata_bytes(entries)).hexdigest()


def sidecar_url(url: str) -> str:
    """The JSON sidecar next to a metadata file: ``<url>.json``."""
    return f"{url}.json"


def save_metadata(url: str, entries: Sequence[str], sources: Sequence[MetadataSource] = ()) -> dict[str, Any]:
    """Write the entries file and its sidecar (atomically); returns the sidecar dict.

    Sidecar: ``version`` (sha256 of the file), ``n_entries``, ``normalization``, and per source its
    provenance, ``count`` (distinct normalised entries it supplies) and ``unique`` (entries no
    other source supplies).
    """
    entries = list(entries)
    if any(normalize_entry(e) != e or not e for e in entries):
        raise ValueError("entries must be normalised (use build_metadata or merge_entries)")
    if entries != sorted(set(entries)):
        raise ValueError("entries must be sorted and distinct")
    normalised = {s.name: {normalize_entry(e) for e in s.entries} - {""} for s in sources}
    source_info = []
    for s in sources:
        others = set().union(*(v for k, v in normalised.items() if k != s.name))
        mine = normalised[s.name]
        source_info.append({"name": s.name, **s.info, "count": len(mine), "unique": len(mine - others)})
    data = metadata_bytes(entries)
    sidecar = {
        "version": hashlib.sha256(data).hexdigest(),
        "n_entries": len(entries),
        "normalization": NORMALIZATION_VERSION,
        "sources": source_info,
    }
    storage.write_bytes(url, data)
    storage.write_json(sidecar_url(url), sidecar)
    return sidecar


def load_metadata(url: str, verify: bool = True) -> list[str]:
    """Read a metadata file; with ``verify``, check it against its sidecar's version when there is one."""
    data = storage.read_bytes(url)
    if verify and storage.exists(sidecar_url(url)):
        sidecar = storage.read_json(sidecar_url(url))
        digest = hashlib.sha256(data).hexdigest()
        if sidecar.get("version") != digest:
            raise ValueError(f"{url}: sha256 {digest} does not match sidecar version {sidecar.get('version')}")
        if sidecar.get("normalization", NORMALIZATION_VERSION) != NORMALIZATION_VERSION:
            raise ValueError(
                f"{url}: built with normalization {sidecar['normalization']}, this code uses {NORMALIZATION_VERSION}"
            )
    return data.decode("utf-8").splitlines()


# ---------------------------------------------------------------------------------------------
# Matching


class Matcher:
    """Aho-Corasick matcher over metadata entries; ``match(text)`` gives the matched entry indices.

    Built once per worker (Beam ``DoFn.setup``); pickles as its entry list and rebuilds on load,
    which takes about a second for 200k entries. Entries are normalised here too, so raw strings
    work; entries that normalise to the same string all match together.
    """

    def __init__(self, entries: Sequence[str]):
        self.entries = list(entries)
        keys: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            n = normalize_entry(e)
            if n:
                keys.setdefault(_entry_key(n), []).append(i)
        # Values are plain ints (a set comprehension over ints is the fastest collection); the rare
        # keys shared by several entries map their first index to all of them in ``_dups``.
        self._automaton = ahocorasick.Automaton()
        self._dups: dict[int, tuple[int, ...]] = {}
        for key, idx in keys.items():
            self._automaton.add_word(key, idx[0])
            if len(idx) > 1:
                self._dups[idx[0]] = tuple(idx)
        self._empty = not keys
        if not self._empty:
            self._automaton.make_automaton()

    def __reduce__(self):
        return (Matcher, (self.entries,))

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str | None) -> list[int]:
        """Sorted distinct indices of the entries found in ``text`` (one automaton pass)."""
        if not text or self._empty:
            return []
        norm = normalize(text)
        if not norm:
            return []
        found = {i for _, i in self._automaton.iter(norm)}
        if self._dups:
            for i in [i for i in found if i in self._dups]:
                found.update(self._dups[i])
        return sorted(found)

    def match_entries(self, text: str | None) -> list[str]:
        """The matched entries themselves (for previews and tests)."""
        return [self.entries[i] for i in self.match(text)]


# ---------------------------------------------------------------------------------------------
# Counting and balancing


def count_matches(matches: Iterable[Sequence[int]], n_entries: int) -> np.ndarray:
    """Texts matched per entry (int64, length ``n_entries``); each list must be distinct indices.

    Partial counts over any split of the corpus add up (``merge_counts``) to the counts over the
    whole corpus: this is the accumulator of the Beam combine.
    """
    flat = np.fromiter(itertools.chain.from_iterable(matches), dtype=np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n_entries):
        raise ValueError(f"entry index out of range [0, {n_entries})")
    return np.bincount(flat, minlength=n_entries).astype(np.int64, copy=False)


def merge_counts(partials: Iterable[np.ndarray]) -> np.ndarray:
    """Sum partial counts (all of the same length)."""
    total: np.ndarray | None = None
    for p in partials:
        p = np.asarray(p, dtype=np.int64)
        if total is None:
            total = p.copy()
        elif p.shape != total.shape:
            raise ValueError(f"partial counts of different lengths: {p.shape} vs {total.shape}")
        else:
            total += p
    if total is None:
        raise ValueError("no partial counts to merge")
    return total


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """MetaCLIP entry probabilities: ``p_e = 1`` if ``count_e < t`` else ``t / count_e`` (float64)."""
    if t <= 0:
        raise ValueError("t must be positive")
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.ones_like(counts)
    head = counts >= t
    probs[head] = t / counts[head]
    return probs


def auto_threshold(
    n_texts: int,
    t_ref: float = 20_000,
    n_ref: float = 400_000_000,
    minimum: int = 10,
    exponent: float = 1.0,
) -> int:
    """Balancing threshold for a corpus of ``n_texts``: ``max(minimum, round(t_ref * (n_texts / n_ref) ** exponent))``.

    MetaCLIP used t = 20k for 400M pairs (and 170k for 2.5B). Linear scaling (``exponent=1``) keeps
    the head cap the same fraction of the corpus; MetaCLIP's own two points grow slightly faster
    (``exponent`` = ln 8.5 / ln 6.25 = 1.17 reproduces both: 20k -> 170k). The floor (default 10)
    matters below ~200k texts, where the linear t would fall under 10 matches: an entry seen fewer
    than 10 times has too noisy a count to down-sample on, so it stays tail.
    """
    if n_texts < 0:
        raise ValueError("n_texts must be >= 0")
    return max(int(minimum), round(t_ref * (n_texts / n_ref) ** exponent))


def keep_probability(matched: Sequence[int], probs: np.ndarray) -> float:
    """Probability that balancing keeps a text: ``1 - prod(1 - p_e)`` over its matched entries."""
    if not len(matched):
        return 0.0
    return float(1.0 - np.prod(1.0 - np.asarray(probs)[list(matched)]))


def balance_decision(
    record_id: str,
    matched: Sequence[int],
    probs: np.ndarray,
    version: int = 1,
    salt: str = "metaclip",
) -> Verdict:
    """Keep or drop one text, deterministically from its id.

    - No matched entry: drop, ``no_metadata_match`` (MetaCLIP only keeps texts matching metadata).
    - ``version=1`` (MetaCLIP): keep if any matched entry ``e`` passes its Bernoulli(p_e) draw;
      the draw for (record, entry) is ``seeded_uniform(record_id, f"{salt}:{e}")``, keyed by the
      entry's index (stable for a given metadata version).
    - ``version=2`` (MetaCLIP 2): one draw ``seeded_uniform(record_id, f"{salt}:v2")`` against
      ``1 - prod(1 - p_e)``. Both keep a text with that same probability; they differ only in
      which texts are kept.
    Otherwise drop, ``balanced_out``.
    """
    if not len(matched):
        return drop("no_metadata_match")
    if version == 1:
        for e in matched:
            p = probs[e]
            if p >= 1.0 or seeded_uniform(record_id, f"{salt}:{e}") < p:
                return KEEP
        return drop("balanced_out")
    if version == 2:
        if seeded_uniform(record_id, f"{salt}:v2") < keep_probability(matched, probs):
            return KEEP
        return drop("balanced_out")
    raise ValueError(f"unknown MetaCLIP version {version!r} (1 or 2)")


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.metaclip", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the metadata file (entries + <out>.json sidecar)")
    b.add_argument("--out", required=True, help="output path or fsspec URL of the entries file")
    b.add_argument(
        "--en-unigrams", type=int, default=DEFAULT_EN_UNIGRAMS, help="top English words from wordfreq (0: none)"
    )
    b.add_argument("--zh", type=int, default=DEFAULT_ZH, help="top Chinese words from wordfreq (0: none)")
    b.add_argument("--extra", default=None, help="file of extra entries, one per line")
    b.add_argument("--wordnet-dir", default=DEFAULT_WORDNET_DIR, help="WordNet database dir (data.noun, ...)")
    b.add_argument("--no-wordnet", action="store_true", help="leave WordNet out")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    sources = metadata_sources(
        wordnet_dir=None if args.no_wordnet else args.wordnet_dir,
        en_unigrams=args.en_unigrams,
        zh=args.zh,
        extra=args.extra,
    )
    entries = merge_entries(s.entries for s in sources)
    sidecar = save_metadata(args.out, entries, sources)
    sidecar["build_seconds"] = round(time.perf_counter() - start, 2)
    json.dump(sidecar, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
