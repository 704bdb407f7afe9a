"""Answer extraction + math_verify on real labelled data, and verification throughput.

    python -m bench.bench_verify            # all 1,319 x 4 GSM8K solutions, all 100 x 8 Qwen CoTs
    python -m bench.bench_verify --quick    # first 200 GSM8K questions, first 25 Qwen problems

Agreement (README block ``verify``): ``curation.reasoning.extract_answer`` then
``VerifierPool.verify_many`` (math_verify, gold first, 2 worker processes, 5 s per item) against
(a) the ``is_correct`` labels of the 4 real model solutions per GSM8K test question
(gsm8k/example_model_solutions.jsonl; gold = the '####' number of gsm8k/test.jsonl) and (b) the
per-sample ``score`` of the 8 Qwen2.5-Math CoT samples per MATH problem (gold = ``answer``).
Goals: >= 99.5% and >= 98%. Every disagreement is listed with its reviewed explanation.

Throughput: the same (gold, answer) pairs through ``VerifierPool(workers=2)`` vs a naive loop
calling ``verify`` in the main thread (no time bound at all, which is what the pool buys), over
all pairs and over the pairs whose strings differ (the ones that need sympy); best of 3 runs
(1 with --quick) after an untimed warm-up pass each, pool start-up reported apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from bench.report import machine, markdown_table, write_block
from curation.math_verify_pool import VerifierPool, verify
from curation.reasoning import extract_answer, gold_from_record

REPO = Path(__file__).resolve().parents[1]
GSM8K_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")

# Reviewed by hand: (dataset, question index, sample) -> category: explanation.
REVIEWED = {
    ("qwen", 72, 7): "label noise: the answer 10000 is the gold 10{,}000; Qwen's scorer does not "
    "read the {,} thousands separator and marks it wrong",
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_cases(data_dir: Path, quick: bool) -> tuple[list[dict], float]:
    """One case per labelled sample (dataset, question index, sample key, gold, extracted answer,
    label), and the seconds extraction took."""
    math_dir = data_dir / "math"
    sols = read_jsonl(math_dir / "gsm8k/example_model_solutions.jsonl")
    tests = read_jsonl(math_dir / "gsm8k/test.jsonl")
    qwen = read_jsonl(math_dir / "qwen_math_cot_samples/math_cot_100.jsonl")
    if quick:
        sols, tests, qwen = sols[:200], tests[:200], qwen[:25]
    cases = []
    t0 = time.perf_counter()
    for i, (s, t) in enumerate(zip(sols, tests)):
        assert s["question"] == t["question"]
        gold = gold_from_record(t)
        for m in GSM8K_MODELS:
            ans = extract_answer(s[m]["solution"])
            cases.append({"ds": "gsm8k", "q": i, "k": m, "gold": gold, "answer": ans, "label": s[m]["is_correct"]})
    for x in qwen:
        for j, (c, score) in enumerate(zip(x["code"], x["score"])):
            ans = extract_answer(c)
            cases.append({"ds": "qwen", "q": x["idx"], "k": j, "gold": x["answer"], "answer": ans, "label": score})
    return cases, time.perf_counter() - t0


def agreement_body(cases: list[dict], outcomes: list) -> tuple[str, list[str]]:
    """The agreement table and one line per disagreement."""
    rows, lines = [], []
    sets = (
        ("gsm8k", "GSM8K test, 4 real model solutions each", 0.995),
        ("qwen", "MATH, 8 Qwen2.5-Math CoT samples each", 0.98),
    )
    for ds, name, goal in sets:
        idx = [i for i, c in enumerate(cases) if c["ds"] == ds]
        if not idx:
            continue
        agree = sum(outcomes[i].correct == cases[i]["label"] for i in idx)
        pos = sum(bool(cases[i]["label"]) for i in idx)
        ours = sum(bool(outcomes[i].correct) for i in idx)
        no_ans = sum(outcomes[i].reason == "no_answer" for i in idx)
        undecided = sum(outcomes[i].correct is None for i in idx)
        n_q = len({cases[i]["q"] for i in idx})
        rate = agree / len(idx)
        rows.append(
            [name, f"{n_q:,} x {len(idx) // n_q}", f"{len(idx):,}", f"{pos:,}", f"{ours:,}", no_ans, undecided,
             f"{agree:,}", f"**{100 * rate:.2f}%**", f"{100 * goal:.1f}%", "yes" if rate >= goal else "NO"]
        )
        for i in idx:
            c, o = cases[i], outcomes[i]
            if o.correct != c["label"]:
                why = REVIEWED.get((ds, c["q"], c["k"]), "not reviewed yet")
                lines.append(
                    f"- {ds} question {c['q']} sample {c['k']}: gold `{c['gold']}`, extracted `{c['answer']}`, "
                    f"label {c['label']}, ours {o.correct} ({o.reason or 'correct'}) - {why}"
                )
    table = markdown_table(
        ["labelled set", "questions x samples", "pairs", "label correct", "verified correct", "no answer",
         "timeout/error", "agree", "agreement", "goal", "met"],
        rows,
    )
    return table, lines


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(pool: VerifierPool, pairs: list[tuple[str, str | None]], repeats: int) -> dict:
    """Best-of-``repeats`` wall seconds (and the CPU seconds of that run, parent + workers) for the
    pairs: the pool vs a main-thread loop, both after one untimed warm-up pass (each worker process
    warms its own sympy caches; steady state is what a long run sees). CPU time shows the pool's
    overhead even on a machine too busy for wall times to mean much. Also the pool's outcomes."""
    pool_out = pool.verify_many(pairs)
    seq_out = [verify(g, a) for g, a in pairs]
    pool_runs = []
    for _ in range(repeats):
        pids = pool.pids
        c0, w0 = [_proc_cpu_s(p) for p in pids], time.process_time()
        t0 = time.perf_counter()
        pool.verify_many(pairs)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - w0 + sum(_proc_cpu_s(p) - c for p, c in zip(pids, c0))
        pool_runs.append((wall, cpu))
    seq_runs = []
    for _ in range(repeats):
        w0, t0 = time.process_time(), time.perf_counter()
        for g, a in pairs:
            verify(g, a)
        seq_runs.append((time.perf_counter() - t0, time.process_time() - w0))
    same = sum(bool(o.correct) == s for o, s in zip(pool_out, seq_out))
    (pool_s, pool_cpu), (seq_s, seq_cpu) = min(pool_runs), min(seq_runs)
    return {"n": len(pairs), "pool_s": pool_s, "pool_cpu": pool_cpu, "seq_s": seq_s, "seq_cpu": seq_cpu,
            "same": same, "pool_out": pool_out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="first 200 GSM8K questions, 25 Qwen problems")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-item time limit of the pool (s)")
    parser.add_argument("--repeats", type=int, default=None, help="timing runs, best kept (default 3, quick 1)")
    parser.add_argument("--data", type=Path, default=None, help="shared data dir (default ../shared/data)")
    parser.add_argument("--no-readme", action="store_true", help="print the tables, leave README alone")
    args = parser.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # 'timeouts disabled': we know

    data_dir = args.data or Path(os.environ.get("VLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    cases, extract_s = load_cases(data_dir, args.quick)
    extract_us = 1e6 * extract_s / len(cases)
    pairs = [(c["gold"], c["answer"]) for c in cases]

    repeats = args.repeats or (1 if args.quick else 3)
    t0 = time.perf_counter()
    pool = VerifierPool(workers=args.workers, timeout_s=args.timeout)
    start_s = time.perf_counter() - t0
    try:
        all_pairs = throughput(pool, pairs, repeats)
        hard = [(g, a) for g, a in pairs if a is not None and g.strip() != a.strip()]
        hard_tp = throughput(pool, hard, repeats)
    finally:
        pool.close()
    outcomes = all_pairs["pool_out"]
    table, disagreements = agreement_body(cases, outcomes)

    def tp_row(name: str, r: dict) -> list:
        return [
            name, f"{r['n']:,}", f"{r['seq_s']:.2f}", f"{r['seq_cpu']:.2f}", f"{r['n'] / r['seq_s']:,.0f}",
            f"{r['pool_s']:.2f}", f"{r['pool_cpu']:.2f}", f"{r['n'] / r['pool_s']:,.0f}",
            f"{r['seq_s'] / r['pool_s']:.2f}x", f"{r['same']:,}/{r['n']:,}",
        ]

    tp_table = markdown_table(
        ["pairs", "n", "main-thread loop s", "CPU s", "pairs/s", f"VerifierPool({args.workers}) s",
         "CPU s (all processes)", "pairs/s", "speed-up", "same verdicts"],
        [tp_row("all labelled pairs", all_pairs), tp_row("strings differ (sympy path)", hard_tp)],
    )
    timeouts = sum(o.reason == "verify_timeout" for o in outcomes)
    errors = sum(o.reason == "verify_error" for o in outcomes)
    scope = "first 200 GSM8K questions and 25 Qwen problems (--quick)" if args.quick else "all labelled samples"
    body = "\n".join(
        [
            f"Answer extraction (`curation.reasoning.extract_answer`) + math_verify 0.9 (gold first) in "
            f"`VerifierPool({args.workers} workers, {args.timeout:g} s per item)` against real labels, {scope} "
            f"(`python -m bench.bench_verify`). Extraction: {extract_us:.0f} us per completion.",
            "",
            table,
            "",
            "Disagreements (each reviewed by hand):" if disagreements else "Disagreements: none.",
            *disagreements,
            "",
            f"Verification throughput, same pairs, best of {repeats} after a warm-up pass: a naive loop "
            f"calling `verify` in the main thread (no time bound: one pathological answer hangs it) vs "
            f"the pool ({timeouts} timeouts, {errors} errors on these pairs; start-up of its "
            f"{args.workers} workers incl. warm-up {start_s:.2f} s, not counted). 'strings differ' "
            f"leaves out identical gold/answer strings, which `verify` settles without sympy (the pool "
            f"settles those in the calling process).",
            "",
            tp_table,
            "",
            f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end (wall-clock "
            f"ratios need an otherwise idle machine; CPU seconds are less sensitive).",
        ]
    )
    if args.no_readme:
        print(body)
    else:
        write_block("verify", body)


if __name__ == "__main__":
    main()
