"""Long-CoT synthesis by rejection sampling: the pure operators (DESIGN.md section 4).

No model calls here: the generation engine lives in pipelines/ and hands over prompts and sampled
completions as data. The flow per prompt:

1. :func:`load_prompts` reads JSONL/Parquet prompts (question, gold, images, choices, source) with a
   stable id; :func:`classify_gold` sets aside golds that cannot be checked (``empty_gold``,
   ``unverifiable_gold``); :class:`NGramDecontaminator` flags prompts that overlap a benchmark.
2. :func:`extract_answer` takes the final answer out of a completion (after ``</think>``).
3. :func:`curation.math_verify_pool.verify` / :class:`VerifierPool` check it against the gold.
4. :func:`check_cot` applies the quality filters in a fixed order.
5. :func:`score_prompt` keeps the accepted samples and the pass rate; :func:`rl_pool_split` routes
   the prompt to the RL pool or the easy pool; :func:`to_sft_sample` makes chat-format SFT samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation import storage
from curation.math_verify_pool import (  # re-exported: the verification half of this module
    VerifierPool,
    VerifyOutcome,
    verify,
    verify_outcome,
)
from curation.records import KEEP, Verdict, content_id, drop

__all__ = [
    "CoTFilterConfig",
    "NGramDecontaminator",
    "PromptStats",
    "VerifierPool",
    "VerifyOutcome",
    "answer_part",
    "check_cot",
    "check_format",
    "check_language_mixing",
    "check_length",
    "check_repetition",
    "check_truncated",
    "classify_gold",
    "difficulty_bucket",
    "extract_answer",
    "format_user_prompt",
    "gold_from_record",
    "load_prompts",
    "repetition_stats",
    "rl_pool_split",
    "score_prompt",
    "script_shares",
    "to_sft_sample",
    "verify",
    "verify_outcome",
]

LETTERS = "ABCDEFGHIJ"

# --------------------------------------------------------------------------------------------
# answer extraction
# --------------------------------------------------------------------------------------------

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_part(completion: str, require_think: bool = False) -> str | None:
    """The text after the reasoning: after the last ``</think>``.

    A completion with ``<think>`` but no ``</think>`` never left its reasoning: None. One without
    think tags is all answer unless ``require_think``. A completion may lack the opening tag (chat
    templates such as DeepSeek-R1's put ``<think>`` in the prompt), so only the closing tag counts.
    """
    if THINK_CLOSE in completion:
        return completion.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in completion or require_think:
        return None
    return completion


_BOX = re.compile(r"\\(?:boxed|fbox)\s*")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` (escaped braces skipped)."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced: truncated inside the box


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces; also the
    brace-less ``\\boxed 5``)."""
    for m in reversed(list(_BOX.finditer(text))):
        j = m.end()
        if j < len(text) and text[j] == "{":
            got = _braced(text, j)
            if got is not None:
                return got[0]
        elif m.group(0).endswith((" ", "\t")) or (j < len(text) and text[j].isalnum()):
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group(0)
    return None


_HASHES = re.compile(r"####\s*(.+)")
_FINAL = re.compile(r"final answer\s*(?:is|:)\s*:?\s*(.+)", re.I)
_THE_ANSWER = re.compile(r"\bthe answer\s*(?:is|:)\s*:?\s*(.+)", re.I)
_ANSWER_LINE = re.compile(r"^\s*[*_]*answer[*_]*\s*:[*_]*\s*(.+)$", re.I | re.M)
_PHRASES = (_HASHES, _FINAL, _THE_ANSWER, _ANSWER_LINE)
_A_LINE = re.compile(r"^A:\s*(.+)$")  # GSM8K example solutions end with 'A: 18'
_MATH_SEG = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_NUM_THEN_WORDS = re.compile(r"^(-?\$?\s?[\d,]*\.?\d+%?)\s+[A-Za-z][A-Za-z\s.]*$")


def _strip_wrappers(s: str) -> str:
    s = s.strip().strip("*").strip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) > len(a) + len(b):
            s = s[len(a) : -len(b)].strip()
    return s


def _clean_phrase(s: str) -> str:
    """A final-answer phrase ('$18$ dollars.', '18 dollars', '**42**') to an answer string."""
    s = s.strip().strip("*").strip()
    boxed = last_boxed(s)
    if boxed is not None:
        return boxed.strip()
    m = _MATH_SEG.search(s)
    if m:
        return next(g for g in m.groups() if g is not None).strip()
    s = s.rstrip(" .;,!").strip()
    m = _NUM_THEN_WORDS.match(s)
    if m:  # '18 dollars', '$1,200 per month': the number; units are not part of the answer
        s = m.group(1)
    if re.match(r"^\$\s?\d", s) and s.count("$") == 1:
        s = s[1:].strip()  # currency sign, not math mode
    return s


def _as_letter(s: str) -> str | None:
    """Option letter of a candidate that names one ('(B)', 'B', '\\text{(C)}', 'B) 12'), else None."""
    t = s.strip()
    if re.fullmatch(r"[A-J]", t):
        return t
    m = re.fullmatch(r"(?:\\text(?:bf)?\{)?\s*\(([A-Ja-j])\)\s*\}?(?:\s+.*)?", t, re.S)
    if m:
        return m.group(1).upper()
    m = re.fullmatch(r"\\text(?:bf)?\{\s*([A-J])\s*\}", t)
    if m:
        return m.group(1)
    m = re.fullmatch(r"([A-J])[.:)]\s+.*", t, re.S)
    if m:
        return m.group(1)
    return None


def _norm_choice(s: str) -> str:
    s = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", _strip_wrappers(s))
    return " ".join(s.casefold().strip(" .").split())


def extract_answer(
    completion: str, require_think: bool = False, choices: Sequence[str] | None = None
) -> str | None:
    """The final answer of a completion, or None.

    Looks only after ``</think>`` (see :func:`answer_part`). First the last complete
    ``\\boxed{}`` / ``\\fbox{}`` (nested braces; last box wins); else the last stated of
    ``#### x``, 'final answer is x', 'the answer is: x' and an 'Answer: x' line; else a last
    line 'A: x' (the GSM8K example-solution format). Phrases are cleaned ('$18$ dollars.' -> '18').
    A candidate naming an option ('(B)', '\\text{B}') becomes its letter. With ``choices`` (a
    multiple-choice prompt), a bare letter on the last line counts too, and an answer that is the
    text of an option becomes its letter.
    """
    text = answer_part(completion, require_think)
    if text is None:
        return None
    ans: str | None = None
    boxed = last_boxed(text)
    if boxed is not None:
        ans = boxed.strip()
    else:
        # the phrase stated last wins, as the last box does
        last = [ms[-1] for pat in _PHRASES if (ms := list(pat.finditer(text)))]
        if last:
            ans = _clean_phrase(max(last, key=lambda m: m.start()).group(1))
        else:
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            if lines:
                m = _A_LINE.match(lines[-1].strip())
                if m:
                    ans = _clean_phrase(m.group(1))
                elif choices and _as_letter(_strip_wrappers(lines[-1])):
                    ans = _strip_wrappers(lines[-1])
    if ans is None:
        return None
    ans = _strip_wrappers(ans)
    letter = _as_letter(ans)
    if letter is not None:
        return letter
    if choices:
        norm = _norm_choice(ans)
        for i, c in enumerate(choices[: len(LETTERS)]):
            if _norm_choice(str(c)) == norm:
                return LETTERS[i]
    return ans or None


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------

_QUESTION_KEYS = ("question", "problem", "query", "prompt", "input", "Question")
_GOLD_KEYS = ("answer", "gold", "final_answer", "gt", "Answer", "label")
_WORKED_KEYS = ("solution", "ground_truth", "gt_cot")  # worked solutions: extract their final answer
_CHOICE_KEYS = ("choices", "options")
_IMAGE_KEYS = ("images", "image", "image_path", "image_paths")


def _num_str(v: float | int) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def gold_from_record(rec: Mapping[str, Any]) -> str | None:
    """The gold final answer of a prompt record.

    ``answer``-like fields are used as they are, except a GSM8K worked answer ('... #### 1,450')
    which gives the number after ``####`` without thousands separators; numbers are formatted
    without a trailing '.0'. Without such a field, a worked solution (``solution``) gives its last
    ``\\boxed{}`` / ``####`` / final-answer phrase, or, when it has none (a proof), its whole text.
    """
    for k in _GOLD_KEYS:
        v = rec.get(k)
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, (int, float)):
            return None if isinstance(v, float) and math.isnan(v) else _num_str(v)
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                continue
            v = v[0]
        v = str(v).strip()
        if "####" in v:
            return v.rsplit("####", 1)[1].strip().replace(",", "")
        if "\\boxed" in v or "\\fbox" in v:  # a worked answer: its box
            return last_boxed(v) or v
        return v
    for k in _WORKED_KEYS:
        v = rec.get(k)
        if isinstance(v, str) and v.strip():
            got = extract_answer(v)
            if got is None:
                return v.strip()  # no final answer in it (a proof): classify_gold sets it aside
            return got.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", got) else got
    return None


def _question(rec: Mapping[str, Any]) -> str | None:
    if rec.get("Body") and rec.get("Question"):  # SVAMP / ASDiv: body + question
        body = str(rec["Body"]).strip()
        sep = " " if body.endswith((".", "?", "!")) else ". "
        return f"{body}{sep}{str(rec['Question']).strip()}"
    for k in _QUESTION_KEYS:
        v = rec.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _choices(rec: Mapping[str, Any]) -> list[str] | None:
    for k in _CHOICE_KEYS:
        v = rec.get(k)
        # a parquet struct column has every key of every row: missing options read back as None
        if isinstance(v, Mapping) and any(x is not None for x in v.values()):
            return [str(v[key]) for key in sorted(v) if v[key] is not None]
        if isinstance(v, (list, tuple)) and any(x is not None for x in v):
            return [str(c) for c in v if c is not None]
    return None


def _image_refs(rec: Mapping[str, Any]) -> list[str]:
    for k in _IMAGE_KEYS:
        v = rec.get(k)
        if v:
            return [str(p) for p in ([v] if isinstance(v, str) else list(v))]
    return []


def _images(rec: Mapping[str, Any], base: str) -> list[str]:
    # relative paths are relative to the prompt file (TabMWP 'tables/250.png')
    return [p if ("://" in p or p.startswith("/")) else storage.join(base, p) for p in _image_refs(rec)]


def _mc_gold(gold: str | None, choices: list[str]) -> tuple[str | None, str | None]:
    """(gold letter, gold choice text) of a multiple-choice item; (None, None) if unmatched."""
    if gold is None:
        return None, None
    g = gold.strip()
    letter = g.upper() if re.fullmatch(r"[A-Ja-j]", g) else _as_letter(g)
    if letter is not None and LETTERS.index(letter) < len(choices):
        return letter, choices[LETTERS.index(letter)]
    norm = [c.strip().casefold() for c in choices]
    if g.casefold() in norm:
        i = norm.index(g.casefold())
        return LETTERS[i], choices[i]
    return None, None


def _read_rows(url: str) -> list[dict]:
    name = url.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        return storage.read_records(url)
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        data = storage.read_bytes(url)
        if name.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        return [json.loads(line) for line in io.TextIOWrapper(io.BytesIO(data), "utf-8") if line.strip()]
    raise ValueError(f"prompts must be .jsonl or .parquet: {url}")


def load_prompts(url: str, source: str | None = None) -> list[dict]:
    """Prompt records from a JSONL or Parquet file (any fsspec URL).

    Each record: ``id`` (content_id of the question, options and image references as written in
    the row, and the source), ``source`` (the row's ``source``, else
    the ``source`` argument, else '<folder>/<file stem>'), ``question``, ``gold`` (see
    :func:`gold_from_record`; the option letter for multiple choice), ``gold_text`` (the choice text
    of a multiple-choice gold, else None), ``choices`` (list or None) and ``images`` (URLs; relative
    paths resolved against the file's folder). Rows without a question are skipped; a missing or
    unusable gold is kept as None/raw for :func:`classify_gold` to set aside with a reason.
    """
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    stem = url.rsplit("/", 1)[-1].split(".", 1)[0]
    default_source = source or (f"{base.rsplit('/', 1)[-1]}/{stem}" if "/" in base else stem)
    out = []
    for rec in _read_rows(url):
        q = _question(rec)
        if q is None:
            continue
        src = str(rec.get("source") or default_source)
        choices = _choices(rec)
        gold = gold_from_record(rec)
        gold_text = None
        if choices:
            letter, gold_text = _mc_gold(gold, choices)
            if letter is not None:
                gold = letter
        # The id hashes the question and, when present, the options and the image references as
        # written in the row (relative to the file, so moving the data keeps ids): TabMWP asks the
        # same question about different tables.
        key = "\x00".join([q, *(choices or []), *_image_refs(rec)])
        out.append(
            {
                "id": content_id(key.encode("utf-8"), src),
                "source": src,
                "question": q,
                "gold": gold,
                "gold_text": gold_text,
                "choices": choices,
                "images": _images(rec, base),
            }
        )
    return out


_PROOF = re.compile(
    r"\b(proofs?|prove[ds]?|show that|we show|q\.?e\.?d\.?|hence shown)\b|\\(?:blacksquare|qed|square)\b",
    re.I,
)
MAX_GOLD_CHARS = 200
MAX_GOLD_WORDS = 6


def classify_gold(gold: str | None, choices: Sequence[str] | None = None) -> Verdict:
    """Can a sampled answer be checked against this gold? KEEP, or drop with a reason.

    ``empty_gold``: None or blank. ``unverifiable_gold``: a proof (proof words, QED marks), free
    text (more than ``MAX_GOLD_WORDS`` words of two or more letters outside math and ``\\text``
    wrappers, or more than ``MAX_GOLD_CHARS`` characters), or a multiple-choice gold that names
    no option (or more than 10 options, A-J). Short text golds ('yes', 'Champ',
    '\\text{4:30 p.m.}') are kept: math_verify compares them as strings.
    """
    if gold is None or not str(gold).strip():
        return drop("empty_gold")
    g = str(gold).strip()
    if choices:
        if len(choices) > len(LETTERS):
            return drop("unverifiable_gold")  # more options than letters A-J
        letter = _as_letter(g)
        return KEEP if letter is not None and LETTERS.index(letter) < len(choices) else drop("unverifiable_gold")
    if len(g) > MAX_GOLD_CHARS or _PROOF.search(g):
        return drop("unverifiable_gold")
    plain = re.sub(r"\\text\{([^{}]*)\}", r" \1 ", g)  # \text{...} words count as words
    plain = re.sub(r"\\[A-Za-z]+", " ", plain)  # other LaTeX commands do not
    if len(re.findall(r"[A-Za-z]{2,}", plain)) > MAX_GOLD_WORDS:
        return drop("unverifiable_gold")
    return KEEP


# --------------------------------------------------------------------------------------------
# decontamination
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.U)
_P = np.uint64(0x100000001B3)  # FNV prime: the polynomial base of the n-gram hash


_NOT_PROSE = re.compile(r"\[asy\].*?\[/asy\]|<\|?image(?:_pad)?\|?>|<img>.*?</img>", re.S | re.I)


def normalize_words(text: str) -> list[str]:
    """NFKC, casefold, words = runs of letters/digits (punctuation, LaTeX backslashes and '$'
    dropped), so 'What is $2+2$?' and 'what is 2 + 2' give the same words. Asymptote diagram code
    and image placeholders ('<image>') are removed first: a visual variant of a benchmark problem
    (diagram rendered, code replaced by '<image>') must still match its text."""
    return _WORD.findall(unicodedata.normalize("NFKC", _NOT_PROSE.sub(" ", text)).casefold())


def _word_hashes(words: Sequence[str], cache: dict[str, int]) -> np.ndarray:
    out = np.empty(len(words), dtype=np.uint64)
    for i, w in enumerate(words):
        h = cache.get(w)
        if h is None:
            # blake2b, not hash(): stable across processes (PYTHONHASHSEED), so a decontaminator
            # built on one worker gives the same answers on another
            h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            if len(cache) < 1_000_000:
                cache[w] = h
        out[i] = h
    return out


def _ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """64-bit polynomial hashes of all word n-grams (vectorised; uint64 wrap-around is the mod)."""
    m = len(wh) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _P + wh[k : k + m]
    return h


class NGramDecontaminator:
    """Flags texts that share a word n-gram with a benchmark item.

    ``n=13`` follows GPT-3's decontamination (13-grams; the common range is 8 to 13): long enough
    that a shared n-gram is not a coincidence of phrasing, short enough to catch a question pasted
    into a longer prompt. Text is normalised by :func:`normalize_words`. Benchmark items shorter
    than ``n`` words but with at least ``min_words`` words are fingerprinted whole (as one gram of
    their length), so short MATH problems are still caught; shorter ones are skipped (counted in
    ``skipped``). Each n-gram is a 64-bit hash kept in a sorted array, so a query costs one
    vectorised hash pass and a ``searchsorted``.
    """

    def __init__(
        self,
        benchmark_texts: Mapping[str, str] | Iterable[tuple[str, str]],
        n: int = 13,
        min_words: int = 8,
    ):
        self.n, self.min_words = n, min_words
        self._cache: dict[str, int] = {}
        items = benchmark_texts.items() if isinstance(benchmark_texts, Mapping) else benchmark_texts
        self.ids: list[str] = []
        keys: dict[int, list[np.ndarray]] = {}
        owners: dict[int, list[np.ndarray]] = {}
        self.skipped = 0
        for bid, text in items:
            words = normalize_words(text)
            if len(words) < min_words:
                self.skipped += 1
                continue
            g = min(n, len(words))
            hs = _ngram_hashes(_word_hashes(words, self._cache), g)
            idx = len(self.ids)
            self.ids.append(str(bid))
            keys.setdefault(g, []).append(hs)
            owners.setdefault(g, []).append(np.full(len(hs), idx, dtype=np.int64))
        # one sorted table per gram length (n, plus shorter whole-item lengths)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for g in keys:
            k = np.concatenate(keys[g])
            o = np.concatenate(owners[g])
            order = np.argsort(k, kind="stable")
            self._tables[g] = (k[order], o[order])

    def __len__(self) -> int:
        return len(self.ids)

    def is_contaminated(self, text: str) -> tuple[bool, str | None]:
        """(True, benchmark id of the first matching n-gram in text order) or (False, None)."""
        words = normalize_words(text)
        if not words or not self._tables:
            return False, None
        wh = _word_hashes(words, self._cache)
        best: tuple[int, str] | None = None
        for g, (keys, owners) in self._tables.items():
            hs = _ngram_hashes(wh, g)
            if not len(hs):
                continue
            pos = np.searchsorted(keys, hs)
            pos[pos >= len(keys)] = len(keys) - 1
            hit = np.flatnonzero(keys[pos] == hs)
            if len(hit) and (best is None or hit[0] < best[0]):
                best = (int(hit[0]), self.ids[int(owners[pos[hit[0]]])])
        return (True, best[1]) if best else (False, None)


# --------------------------------------------------------------------------------------------
# quality filters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoTFilterConfig:
    """Thresholds of :func:`check_cot` (defaults tuned on the real Qwen2.5-Math CoTs, see README).

    repetition: a sample is degenerate when its duplicated word n-grams cover more than
    ``max_dup_ngram_frac`` of its words (``repetition_n``-grams), or one line of at least
    ``min_line_chars`` characters repeats more than ``max_line_repeats`` times, or a character
    run repeats a short period past ``max_char_run`` characters ('181818...').
    language_mixing: the minority script's share of the units of prose outside math (see
    :func:`script_shares`) above ``max_minority_script``, once there are ``min_script_units``.

    Tuning on real data. The 800 Qwen2.5-Math CoTs reach at most: 0.42 duplicated 10-gram share
    (an enumeration of bracketings), 5 repeats of one line, an 80-character run ('\\times 10'
    eight times); all pass. The degenerate GSM8K model solutions reach 0.51-0.79 (templated line
    loops) and 630-1,480-character runs ('1818...'); all 9 fail. Long CoTs do restate equations
    and re-check steps, hence thresholds well above what real CoTs reach. Three Qwen CoTs end their
    correct answer with a garbage tail of Chinese/Korean/Latin tokens: CJK share 0.33-0.37, caught
    by the 0.1 language-mixing threshold (the other 797 have none).
    """

    require_think: bool = True
    min_chars: int = 50
    max_chars: int = 100_000
    min_tokens: int | None = None
    max_tokens: int | None = None
    repetition_n: int = 10
    max_dup_ngram_frac: float = 0.5
    min_line_chars: int = 20
    max_line_repeats: int = 10
    max_char_run: int = 200
    max_minority_script: float = 0.1
    min_script_units: int = 20
    expected_script: str | None = None  # 'latin' | 'cjk' | None (the majority script)


def check_truncated(completion: str, finish_reason: str | None = None) -> Verdict:
    """``truncated``: the engine stopped at max tokens, or there is no final answer at all.

    The answer is looked for leniently here (think tags optional); a missing ``</think>`` with an
    open ``<think>`` counts as truncated, a missing tag pair is a ``format`` matter.
    """
    if finish_reason == "length":
        return drop("truncated")
    if extract_answer(completion, require_think=False) is None:
        return drop("truncated")
    return KEEP


def check_format(completion: str, require_think: bool = True) -> Verdict:
    """``format``: with ``require_think``, exactly one ``<think>...</think>`` (the opening tag may
    sit in the prompt), non-empty reasoning, then a non-empty answer part. Without it, only a
    stray or repeated tag is a format error."""
    n_open, n_close = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    if n_open > 1 or n_close > 1 or (n_open and not n_close):
        return drop("format")
    if not require_think and n_close == 0:
        return KEEP
    if n_close == 0:
        return drop("format")
    reasoning, answer = completion.split(THINK_CLOSE, 1)
    if n_open:
        pre, reasoning = reasoning.split(THINK_OPEN, 1)
        if pre.strip():
            return drop("format")  # text before <think>
    if not reasoning.strip() or not answer.strip():
        return drop("format")
    return KEEP


def repetition_stats(text: str, n: int = 10, min_line_chars: int = 20) -> dict[str, float]:
    """Measures of degenerate repetition.

    ``dup_ngram_frac``: share of words covered by a word n-gram that occurred earlier in the text
    (Gopher's duplicate n-gram fraction, counted on words). ``max_line_repeats``: the count of the
    most frequent line of at least ``min_line_chars`` characters. ``max_char_run``: the longest
    stretch made of one unit of 1-20 characters repeated back to back.
    """
    words = text.split()
    dup = 0.0
    if len(words) >= n:
        seen: set[tuple[str, ...]] = set()
        covered = np.zeros(len(words), dtype=bool)
        for i in range(len(words) - n + 1):
            g = tuple(words[i : i + n])
            if g in seen:
                covered[i : i + n] = True
            else:
                seen.add(g)
        dup = float(covered.mean())
    lines = Counter(ln.strip() for ln in text.splitlines() if len(ln.strip()) >= min_line_chars)
    line_rep = max(lines.values(), default=0)
    run = max((len(m.group(0)) for m in _RUN.finditer(text)), default=0)
    return {"dup_ngram_frac": dup, "max_line_repeats": float(line_rep), "max_char_run": float(run)}


_RUN = re.compile(r"(.{1,20}?)\1{4,}", re.S)


def check_repetition(text: str, config: CoTFilterConfig | None = None) -> Verdict:
    """``repetition``: any measure of :func:`repetition_stats` past its threshold in ``config``."""
    c = config or CoTFilterConfig()
    s = repetition_stats(text, c.repetition_n, c.min_line_chars)
    if (
        s["dup_ngram_frac"] > c.max_dup_ngram_frac
        or s["max_line_repeats"] > c.max_line_repeats
        or s["max_char_run"] > c.max_char_run
    ):
        return drop("repetition")
    return KEEP


_MATH_SPANS = re.compile(
    r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]|\\begin\{(\w+\*?)\}.*?\\end\{\1\}"  # math
    r"|```.*?```|\\[A-Za-z]+|</?[A-Za-z_]+>",  # code blocks, LaTeX commands, tags
    re.S,
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}")


def script_shares(text: str) -> dict[str, float]:
    """Shares of CJK and Latin units in the prose: math (``$..$``, ``\\(..\\)``, ``\\[..\\]``,
    environments), code blocks, LaTeX commands and tags (``<think>``) are removed first. A unit is one CJK character
    or one Latin word of two or more letters (single letters are variables), which weighs the two
    scripts about equally per word of meaning. Returns ``cjk``, ``latin`` (shares) and ``units``."""
    prose = _MATH_SPANS.sub(" ", text)
    cjk = len(_CJK.findall(prose))
    latin = len(_LATIN_WORD.findall(prose))
    total = cjk + latin
    if total == 0:
        return {"cjk": 0.0, "latin": 0.0, "units": 0.0}
    return {"cjk": cjk / total, "latin": latin / total, "units": float(total)}


def check_language_mixing(text: str, config: CoTFilterConfig | None = None) -> Verdict:
    """``language_mixing``: the other script's share above ``max_minority_script`` (the other
    script is the one that is not ``expected_script``, or the minority one when it is None)."""
    c = config or CoTFilterConfig()
    s = script_shares(text)
    if s["units"] < c.min_script_units:
        return KEEP
    if c.expected_script == "latin":
        other = s["cjk"]
    elif c.expected_script == "cjk":
        other = s["latin"]
    else:
        other = min(s["cjk"], s["latin"])
    return drop("language_mixing") if other > c.max_minority_script else KEEP


def check_length(completion: str, config: CoTFilterConfig | None = None, n_tokens: int | None = None) -> Verdict:
    """``too_short`` / ``too_long``: characters always; tokens when the engine reported a count."""
    c = config or CoTFilterConfig()
    n = len(completion)
    if n < c.min_chars or (n_tokens is not None and c.min_tokens is not None and n_tokens < c.min_tokens):
        return drop("too_short")
    if n > c.max_chars or (n_tokens is not None and c.max_tokens is not None and n_tokens > c.max_tokens):
        return drop("too_long")
    return KEEP


def check_cot(
    completion: str,
    finish_reason: str | None = None,
    config: CoTFilterConfig | None = None,
    n_tokens: int | None = None,
) -> Verdict:
    """All quality filters in a fixed order, first failure wins:
    ``truncated`` -> ``format`` -> ``repetition`` -> ``language_mixing`` -> ``too_short``/``too_long``.

    Truncation first because a cut-off sample fails everything else for that one reason; format
    before content because the content checks read the reasoning; length last so that a runaway
    loop is reported as ``repetition``, the more useful reason.
    """
    c = config or CoTFilterConfig()
    for v in (
        check_truncated(completion, finish_reason),
        check_format(completion, c.require_think),
    ):
        if not v.keep:
            return v
    for check in (check_repetition, check_language_mixing):
        v = check(completion, c)
        if not v.keep:
            return v
    return check_length(completion, c, n_tokens)


# --------------------------------------------------------------------------------------------
# rejection-sampling bookkeeping
# --------------------------------------------------------------------------------------------


def difficulty_bucket(pass_rate: float | None) -> str:
    """'unsolved' (0 or undecided), 'hard' (<= 0.3), 'medium' (<= 0.7), 'easy' (< 1),
    'trivial' (every sample correct)."""
    if pass_rate is None or pass_rate == 0:
        return "unsolved"
    if pass_rate <= 0.3:
        return "hard"
    if pass_rate <= 0.7:
        return "medium"
    return "easy" if pass_rate < 1 else "trivial"


@dataclass(frozen=True)
class PromptStats:
    """Outcome of rejection sampling for one prompt.

    ``pass_rate`` = n_correct / (n - n_undecided): correctness only (it measures difficulty for the
    policy), with timeouts and verifier errors left out of the denominator; None when nothing was
    decided. ``accepted``: indices that are correct and pass :func:`check_cot`. ``rejected``: index
    -> reason for the others (a verification reason, or the first quality filter that failed).
    """

    prompt_id: str
    n: int
    n_correct: int
    n_undecided: int
    pass_rate: float | None
    accepted: tuple[int, ...]
    rejected: dict[int, str] = field(default_factory=dict)
    difficulty: str = "unsolved"


def _text(c: str | Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    if isinstance(c, str):
        return c, None, None
    return str(c.get("text", "")), c.get("finish_reason"), c.get("n_tokens")


def score_prompt(
    prompt: Mapping[str, Any],
    completions: Sequence[str | Mapping[str, Any]],
    outcomes: Sequence[VerifyOutcome],
    config: CoTFilterConfig | None = None,
) -> PromptStats:
    """Pass rate and accepted samples of one prompt.

    ``completions`` are strings or dicts with ``text`` and optional ``finish_reason`` /
    ``n_tokens`` (as the engine returns them); ``outcomes`` the verification of each, in order.
    """
    if len(completions) != len(outcomes):
        raise ValueError(f"{len(completions)} completions but {len(outcomes)} outcomes")
    accepted, rejected = [], {}
    n_correct = n_undecided = 0
    for i, (c, o) in enumerate(zip(completions, outcomes)):
        if o.correct is None:
            n_undecided += 1
        elif o.correct:
            n_correct += 1
        if not o.correct:
            rejected[i] = o.reason or "wrong_answer"
            continue
        text, finish, n_tok = _text(c)
        v = check_cot(text, finish, config, n_tok)
        if v.keep:
            accepted.append(i)
        else:
            rejected[i] = v.reason or "rejected"
    decided = len(completions) - n_undecided
    rate = n_correct / decided if decided else None
    return PromptStats(
        prompt_id=str(prompt.get("id", "")),
        n=len(completions),
        n_correct=n_correct,
        n_undecided=n_undecided,
        pass_rate=rate,
        accepted=tuple(accepted),
        rejected=rejected,
        difficulty=difficulty_bucket(rate),
    )


def rl_pool_split(stats: PromptStats, easy_threshold: float = 0.9) -> str:
    """Where a prompt goes for RL: 'easy' (pass rate > ``easy_threshold``: MiMo moves these out of
    the RL set into an easy pool that is re-sampled at a low rate), 'unsolved' (pass rate 0 or
    nothing decided), or 'rl'.

    'unsolved' is a flag, not a drop: a zero pass rate means either a problem too hard for the
    sampler (worth keeping for RL with a stronger policy) or a wrong/unparseable gold (the Qwen
    sample set has both). The rl_prompt_pool asset keeps them in the RL pool with this flag, so a
    data engineer can audit them; callers that want them out filter on the label.
    """
    if stats.pass_rate is None or stats.pass_rate == 0:
        return "unsolved"
    if stats.pass_rate > easy_threshold:
        return "easy"
    return "rl"


def format_user_prompt(prompt: Mapping[str, Any]) -> str:
    """The user turn: the question, and for multiple choice the options as '(A) ...' lines."""
    q = str(prompt["question"])
    choices = prompt.get("choices")
    if choices:
        opts = "\n".join(f"({letter}) {c}" for letter, c in zip(LETTERS, choices))
        q = f"{q}\n\nChoices:\n{opts}"
    return q


def to_sft_sample(prompt: Mapping[str, Any], completion: str | Mapping[str, Any], system: str | None = None) -> dict:
    """A chat-format SFT sample: ``messages`` = [system?], user, assistant (the full completion,
    ``<think>`` block included), plus ``id`` (content_id of prompt id + completion), ``prompt_id``,
    ``source``, ``gold`` and ``images``. With images the user content is a list of parts
    (``{"type": "image"}`` per image, then the text), the TRL / transformers VLM chat format, and
    the image URLs are in ``images`` in the same order."""
    text = _text(completion)[0]
    images = list(prompt.get("images") or [])
    user_text = format_user_prompt(prompt)
    user: dict[str, Any]
    if images:
        user = {"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": user_text}]}
    else:
        user = {"role": "user", "content": user_text}
    messages = ([{"role": "system", "content": system}] if system else []) + [
        user,
        {"role": "assistant", "content": text},
    ]
    pid = str(prompt.get("id", ""))
    return {
        "id": content_id(text.encode("utf-8"), pid),
        "prompt_id": pid,
        "source": prompt.get("source"),
        "gold": prompt.get("gold"),
        "images": images,
        "messages": messages,
    }
