"""MinHash signatures and LSH near-dup recall: curation.minhash vs datasketch, from raw text.

    python -m bench.bench_minhash               # 20,000 documents; writes README
    python -m bench.bench_minhash --quick       # 2,000 documents; prints only
    python -m bench.bench_minhash --n 5000 --planted 100

Corpus: the 181 real article bodies of ``web/article_extraction_benchmark`` (mean ~730 words),
cut into paragraphs; each background document is 12-24 random paragraphs of the pool with 10% of
its words replaced by random pool words (so no two are near-duplicates by construction), and
``--planted`` pairs per level are planted: a document and a copy edited (random word replacements,
deletions and insertions, one at a time) until the exact Jaccard similarity of their 5-gram shingle
sets falls just below 0.8, 0.7 or 0.5 (the table reports the edit rate this took).

Speed (README block ``minhash``), end to end from raw text to (N, 112) signatures, one process:
  datasketch  ``MinHash.bulk([shingles(t) for t in texts], num_perm=112, seed=1)`` (its default
              scheme affine32 and hash sha1_hash32), with ``curation.minhash.shingles`` (plain
              Python) doing the tokenising; also with ``hashfunc=xxh32`` and ``poly_hash32``.
  ours        ``curation.minhash.signatures(texts, hashfunc=...)``.
Each pair of rows with the same hash function is asserted identical (all documents for sha1 and
xxh32; ``--check`` documents for poly, whose scalar form is pure Python and slow in datasketch).
Times are CPU seconds of this process (``time.process_time``: the machine is shared, and CPU time
does not count other processes' load), best of ``--repeats``.

Recall: clusters from ``near_duplicates`` (14 bands x 8 rows, no verification); a planted pair is
found when both documents land in one cluster. Expected: the mean of ``1 - (1 - s^8)^14`` over the
pairs' exact similarities ``s``. False links: clustered background pairs (candidate pairs of two
background documents) with exact Jaccard < 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np

from bench.report import machine, markdown_table, write_block
from curation import minhash as mh

REPO = Path(__file__).resolve().parents[1]
LEVELS = (0.8, 0.7, 0.5)


def paragraphs(data_dir: Path) -> list[str]:
    gt = json.loads((data_dir / "web" / "article_extraction_benchmark" / "ground-truth.json").read_text())
    out = []
    for key in sorted(gt):
        out += [p.strip() for p in re.split(r"\n+", gt[key].get("articleBody", "")) if len(p.split()) >= 8]
    return out


def jaccard(a: str, b: str) -> float:
    sa, sb = set(mh.shingles(a)), set(mh.shingles(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def perturb_to(text: str, target: float, vocab: list[str], rng: random.Random) -> tuple[str, float, float]:
    """Edit words of ``text`` until the exact shingle Jaccard is <= ``target``: (copy, Jaccard, edits per word)."""
    w = text.split()
    n0 = len(w)
    base = set(mh.shingles(text))
    step = max(1, len(w) // 200)  # a few edits between checks on long texts
    edits = 0
    while True:
        edits += step
        for _ in range(step):
            i = rng.randrange(len(w))
            op = rng.random()
            if op < 0.6:
                w[i] = rng.choice(vocab)
            elif op < 0.8 and len(w) > 10:
                del w[i]
            else:
                w.insert(i, rng.choice(vocab))
        cand = " ".join(w)
        s = set(mh.shingles(cand))
        j = len(base & s) / len(base | s)
        if j <= target:
            return cand, j, edits / n0


def make_corpus(data_dir: Path, n: int, planted: int, seed: int = 0) -> tuple[list[str], list[tuple]]:
    """(texts, planted pairs (i, j, target level, exact Jaccard, edits per word))."""
    rng = random.Random(seed)
    pool = paragraphs(data_dir)
    vocab = sorted({w for p in pool for w in p.split()})
    n_bg = n - planted * len(LEVELS)
    texts = []
    for _ in range(n_bg):
        words = " ".join(rng.sample(pool, rng.randint(12, 24))).split()
        for _ in range(len(words) // 10):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        texts.append(" ".join(words))
    pairs = []
    sources = rng.sample(range(n_bg), planted * len(LEVELS))
    for k, level in enumerate(LEVELS):
        for src in sources[k * planted : (k + 1) * planted]:
            copy, j, rate = perturb_to(texts[src], level, vocab, rng)
            texts.append(copy)
            pairs.append((src, len(texts) - 1, level, j, rate))
    return texts, pairs


def cpu_best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def datasketch_sigs(texts: list[str], hashfunc: str) -> np.ndarray:
    from datasketch import MinHash

    kwargs = {"num_perm": mh.NUM_PERM, "seed": mh.SEED}
    if hashfunc != "sha1":  # sha1_hash32 is datasketch's default: leave it unset
        kwargs["hashfunc"] = mh.SCALAR_HASHES[hashfunc]
    return np.array([m.hashvalues for m in MinHash.bulk([mh.shingles(t) for t in texts], **kwargs)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 documents, 1 repeat, print only")
    ap.add_argument("--n", type=int, default=None, help="documents (default 20,000)")
    ap.add_argument("--planted", type=int, default=None, help="planted pairs per level (default 300)")
    ap.add_argument("--check", type=int, default=300, help="documents checked against datasketch for poly")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--data", type=Path, default=None, help="shared data dir (default ../shared/data)")
    ap.add_argument("--no-readme", action="store_true", help="print the tables, leave README alone")
    args = ap.parse_args(argv)
    data_dir = args.data or Path(os.environ.get("VLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    n = args.n or (2000 if args.quick else 20000)
    planted = args.planted or (50 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 3)

    texts, planted_pairs = make_corpus(data_dir, n, planted)
    n_words = np.mean([len(mh.words(t)) for t in texts])
    mh._char_classes()  # built once per process (~0.3 s); not part of the per-batch cost

    rows = []
    t_ds, ref_sha1 = cpu_best(lambda: datasketch_sigs(texts, "sha1"), 1)
    base_rate = len(texts) / t_ds
    rows.append(["datasketch 2.0 `MinHash.bulk`", "sha1 (default)", f"{base_rate:,.0f}", "1.0x", "reference"])
    for hashfunc in ("sha1", "xxh32", "poly"):
        t, sig = cpu_best(lambda: mh.signatures(texts, hashfunc=hashfunc), repeats)
        if hashfunc == "sha1":
            ref, t_ref, m = ref_sha1, t_ds, len(texts)
        else:
            m = len(texts) if hashfunc == "xxh32" else min(args.check, len(texts))
            t_ref, ref = cpu_best(lambda: datasketch_sigs(texts[:m], hashfunc), 1)
            rows.append([f"datasketch 2.0 `MinHash.bulk`", hashfunc, f"{m / t_ref:,.0f}", f"{m / t_ref / base_rate:.1f}x", ""])
        same = bool(np.array_equal(sig[:m], ref))
        assert same, f"signatures differ from datasketch for {hashfunc}"
        rows.append(
            [
                "`curation.minhash.signatures`",
                hashfunc,
                f"{len(texts) / t:,.0f}",
                f"**{len(texts) / t / base_rate:.1f}x**",
                f"identical on {m:,} docs",
            ]
        )
        print(rows[-1], flush=True)

    # recall of planted pairs at 14 x 8 (poly signatures, the default)
    sig = mh.signatures(texts)
    lengths = np.array([len(t) for t in texts])
    t0 = time.process_time()
    labels, rep, keep = mh.near_duplicates(sig, lengths)
    t_cluster = time.process_time() - t0
    rec_rows = []
    for level in LEVELS:
        ps = [p for p in planted_pairs if p[2] == level]
        found = [labels[p[0]] == labels[p[1]] for p in ps]
        js = np.array([p[3] for p in ps])
        rec_rows.append(
            [
                f"<= {level}",
                len(ps),
                f"{100 * np.mean([p[4] for p in ps]):.1f}%",
                f"{js.mean():.3f}",
                f"{np.mean(found):.3f}",
                f"{float(np.mean(mh.collision_probability(js))):.3f}",
            ]
        )
    n_bg = n - planted * len(LEVELS)
    pairs = mh.candidate_pairs(mh.band_keys(sig))
    bg = pairs[(pairs[:, 1] < n_bg)]
    false_links = sum(jaccard(texts[i], texts[j]) < 0.5 for i, j in bg.tolist())

    body = "\n".join(
        [
            f"{len(texts):,} documents (mean {n_words:.0f} words) built from the real article bodies of "
            "`web/article_extraction_benchmark`, 112 permutations (seed 1, datasketch's default scheme "
            "affine32), word 5-gram shingles; end to end from raw text, CPU seconds of one process. "
            "Goal: >= 5x datasketch, same signatures.",
            "",
            markdown_table(["implementation", "hash", "docs/s", "vs datasketch default", "signatures"], rows),
            "",
            f"Near-dup recall at 14 bands x 8 rows (threshold (1/14)^(1/8) = {mh.lsh_threshold():.3f}), "
            f"{planted} planted pairs per level (a copy edited until the exact 5-gram Jaccard falls "
            "below the level); found = same cluster:",
            "",
            markdown_table(["exact Jaccard", "pairs", "words edited", "mean Jaccard", "found", "expected 1-(1-s^8)^14"], rec_rows),
            "",
            f"Candidate pairs among background documents: {len(bg)}, of which {false_links} with exact "
            f"Jaccard < 0.5; {int((~keep).sum())} documents dropped as near-duplicates; banding, "
            f"candidates and union-find took {t_cluster:.2f} s.",
            "",
            f"Machine: {machine()}",
        ]
    )
    if args.no_readme or args.quick:
        print(body)
    else:
        write_block("minhash", body)


if __name__ == "__main__":
    main()
