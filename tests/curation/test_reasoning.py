"""Long-CoT rejection sampling operators: extraction, math_verify pool, filters, bookkeeping.

Real labelled data from ../shared/data/math: GSM8K test questions with 4 real model solutions and
their ``is_correct`` labels (first 200 questions here; all 1,319 in bench/bench_verify.py), and 100
MATH problems x 8 Qwen2.5-Math CoT samples with per-sample scores (all of them).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from curation import storage
from curation.math_verify_pool import VerifierPool, VerifyOutcome, verify, verify_outcome
from curation.reasoning import (
    CoTFilterConfig,
    NGramDecontaminator,
    PromptStats,
    answer_part,
    check_cot,
    check_format,
    check_language_mixing,
    check_length,
    check_repetition,
    check_truncated,
    classify_gold,
    difficulty_bucket,
    extract_answer,
    format_user_prompt,
    gold_from_record,
    load_prompts,
    rl_pool_split,
    score_prompt,
    script_shares,
    to_sft_sample,
)

GSM8K_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
PATHOLOGICAL = ("(x+1)^{2000}", "(x+2)^{2000}")  # sympy expands both: minutes, not milliseconds


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout_s=5) as p:
        yield p


@pytest.fixture(scope="module")
def qwen(shared_data):
    return read_jsonl(shared_data / "math/qwen_math_cot_samples/math_cot_100.jsonl")


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so the result is \\boxed{42}.", "42"),
        ("first \\boxed{1}, then corrected: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last box wins
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces inside
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{3} and then \\boxed{\\frac{1}{", "3"),  # truncated last box: last complete one
        ("Janet makes 9 * 2 = 18\n#### 1,800", "1,800"),
        ("The final answer is $18$. I hope it is correct.", "18"),
        ("Therefore, the answer is: 18 dollars.", "18"),
        ("The answer is $1,200 per month.", "1,200"),
        ("**Answer:** 3/4", "3/4"),
        ("She makes $18 a day\nA: 18", "18"),
        ("The answer is (B).", "B"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("The final answer is \\(\\textbf{(D)}\\)", "D"),
        ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "6"),
        ("reasoning without tags... </think> \\boxed{6}", "6"),  # opening tag came with the prompt
        ("<think>the answer is \\boxed{5} but wait", None),  # never left the reasoning
        ("I do not know.", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_require_think_and_multiple_choice():
    assert extract_answer("\\boxed{4}", require_think=True) is None
    assert extract_answer("<think>x</think>\\boxed{4}", require_think=True) == "4"
    assert extract_answer("Comparing the options...\n(C)") is None
    assert extract_answer("Comparing the options...\n(C)", choices=["1", "2", "3"]) == "C"
    # TabMWP-style: the model names the option's text instead of its letter
    assert extract_answer("So the answer is \\boxed{\\text{Champ}}", choices=["Sprinkles", "Champ"]) == "B"
    assert extract_answer("The answer is champ.", choices=["Sprinkles", "Champ"]) == "B"
    assert extract_answer("The answer is Rex.", choices=["Sprinkles", "Champ"]) == "Rex"
    # the phrase stated last wins
    assert extract_answer("The final answer is 3. Hmm, no: the answer is 4.") == "4"
    assert answer_part("a</think>b</think>c") == "c"
    assert answer_part("no tags") == "no tags"
    assert answer_part("no tags", require_think=True) is None


# ---------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, answer, expected",
    [
        ("18", "18", True),
        ("18", "18.0", True),
        ("2125", "2,125", True),
        ("\\frac{3}{8}", "0.375", True),
        ("\\frac{3}{8}", "\\frac{5}{16}", False),
        ("10{,}000", "10000", True),
        ("50,\\!625", "50625", True),
        ("\\dfrac{1}{9}", "\\frac19", True),
        ("1\\frac{1}{10}", "1 \\frac{1}{10}", True),
        ("\\sqrt{2}", "2^{1/2}", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
        ("\\text{Evelyn}", "Evelyn", True),
        ("A", "(a)", True),
        ("A", "C", False),
        ("\\text{4:30 p.m.}", "4:30", False),  # math_verify reads '4:30' as 4/30
        ("18", None, False),
        ("18", "  ", False),
    ],
)
def test_verify(gold, answer, expected):
    assert verify(gold, answer) is expected


def test_math_verify_signal_timeouts_fail_off_main_thread_but_ours_do_not():
    """Why the pool exists: math_verify's default (signal) timeouts raise in a worker thread."""
    from math_verify import parse

    errors, ours = [], []

    def run():
        try:
            parse("\\boxed{1}", parsing_timeout=5, raise_on_error=True)
        except ValueError as e:
            errors.append(str(e))
        ours.append(verify("\\frac{1}{2}", "0.5"))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and "thread" in errors[0]
    assert ours == [True]


def test_gsm8k_agreement_first_200_questions(shared_data, pool):
    solutions = read_jsonl(shared_data / "math/gsm8k/example_model_solutions.jsonl")[:200]
    tests = read_jsonl(shared_data / "math/gsm8k/test.jsonl")[:200]
    pairs, labels = [], []
    for sol, t in zip(solutions, tests):
        gold = gold_from_record(t)
        for m in GSM8K_MODELS:
            pairs.append((gold, extract_answer(sol[m]["solution"])))
            labels.append(sol[m]["is_correct"])
    outcomes = pool.verify_many(pairs)
    assert len(outcomes) == 800
    assert sum(o.correct == label for o, label in zip(outcomes, labels)) == 800
    assert sum(labels) == 295
    assert Counter(o.reason for o in outcomes) == {None: 295, "wrong_answer": 500, "no_answer": 5}


def test_qwen_cot_agreement_all_800(qwen, pool):
    pairs = [(x["answer"], extract_answer(c)) for x in qwen for c in x["code"]]
    outcomes = pool.verify_many(pairs)
    scores = [s for x in qwen for s in x["score"]]
    agree = [o.correct == s for o, s in zip(outcomes, scores)]
    assert sum(agree) == 799
    # the one disagreement: sample 7 of problem 72, '10000' vs gold '10{,}000', which Qwen's own
    # scorer marks wrong (label noise: it is the gold number)
    (bad,) = [i for i, a in enumerate(agree) if not a]
    assert divmod(bad, 8) == (72, 7) and qwen[72]["idx"] == 72
    assert pairs[bad] == ("10{,}000", "10000") and outcomes[bad] == VerifyOutcome(True, None)


def test_pool_timeout_replaces_the_worker_and_keeps_the_batch(pool):
    pids = pool.pids
    before = dict(pool.stats)
    assert pool.verify_many([]) == []
    with VerifierPool(workers=2, timeout_s=1.0) as small:
        old = small.pids
        t0 = time.monotonic()
        out = small.verify_many([("18", "18"), PATHOLOGICAL, ("\\frac12", "0.5"), ("3", None), ("2", "3")])
        elapsed = time.monotonic() - t0
        assert out == [
            VerifyOutcome(True, None),
            VerifyOutcome(None, "verify_timeout"),
            VerifyOutcome(True, None),
            VerifyOutcome(False, "no_answer"),
            VerifyOutcome(False, "wrong_answer"),
        ]
        assert 1.0 <= elapsed < 10
        assert small.stats["timeouts"] == 1 and small.stats["restarts"] == 1
        assert len(set(old) - set(small.pids)) == 1  # exactly the hung worker was replaced
        assert small.verify_many([("\\sqrt{4}", "2")]) == [VerifyOutcome(True, None)]
    assert pool.pids == pids and pool.stats["timeouts"] == before["timeouts"]


def test_pool_crashed_worker_gives_verify_error(pool):
    with VerifierPool(workers=1, timeout_s=60) as one:
        # a worker killed while idle is replaced on the next dispatch, the item still verified
        os.kill(one.pids[0], signal.SIGKILL)
        time.sleep(0.2)
        assert one.verify_many([("\\frac{1}{2}", "0.5")]) == [VerifyOutcome(True, None)]
        assert one.stats["restarts"] == 1 and one.stats["errors"] == 0
        # a worker killed while it holds an item: that item is an error, the pool carries on
        result: list = []
        th = threading.Thread(target=lambda: result.extend(one.verify_many([PATHOLOGICAL, ("2", "2")])))
        th.start()
        deadline = time.monotonic() + 10
        while one.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(one.pids[0], signal.SIGKILL)
        th.join(30)
        assert result == [VerifyOutcome(None, "verify_error"), VerifyOutcome(True, None)]
        assert one.stats["errors"] == 1


def test_pool_from_a_worker_thread(pool):
    got: list = []
    th = threading.Thread(target=lambda: got.extend(pool.verify_many([("\\frac{1}{2}", "0.5"), ("x", "y")])))
    th.start()
    th.join(30)
    assert got == [VerifyOutcome(True, None), VerifyOutcome(False, "wrong_answer")]


def test_pool_rejects_fork_and_zero_workers():
    with pytest.raises(ValueError):
        VerifierPool(workers=1, context="fork")
    with pytest.raises(ValueError):
        VerifierPool(workers=0)


def test_verify_outcome_in_process():
    assert verify_outcome("7", "7") == VerifyOutcome(True, None)
    assert verify_outcome("7", "8") == VerifyOutcome(False, "wrong_answer")
    assert verify_outcome("7", None) == VerifyOutcome(False, "no_answer")


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, n, source, first_gold",
    [
        ("gsm8k/test.jsonl", 1319, "gsm8k/test", "18"),
        ("gsm8k/example_model_solutions.jsonl", 1319, "gsm8k/example_model_solutions", "18"),
        ("math500/test.jsonl", 500, "math500/test", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("svamp/test.jsonl", 1000, "svamp/test", "145"),
        ("visual_tabmwp/test300.jsonl", 300, "visual_tabmwp/test300", "7"),
        ("visual_math500_asy/problems.jsonl", 40, "visual_math500_asy/problems", "\\text{Evelyn}"),
        ("qwen_math_cot_samples/math_cot_100.jsonl", 100, "qwen_math_cot_samples/math_cot_100", "420"),
    ],
)
def test_load_prompts_real_files(shared_data, path, n, source, first_gold):
    prompts = load_prompts(str(shared_data / "math" / path))
    assert len(prompts) == n
    assert len({p["id"] for p in prompts}) == n  # TabMWP repeats questions over different tables
    assert prompts[0]["source"] == source and prompts[0]["gold"] == first_gold
    assert all(classify_gold(p["gold"], p["choices"]).keep for p in prompts)
    assert load_prompts(str(shared_data / "math" / path))[0]["id"] == prompts[0]["id"]  # stable


def test_load_prompts_fields(shared_data):
    gsm = load_prompts(str(shared_data / "math/gsm8k/test.jsonl"))
    assert sum("," in p["gold"] for p in gsm) == 0  # '#### 2,125' -> '2125'
    assert [p["gold"] for p in gsm if p["gold"] in ("2125", "1450000")] == ["2125", "1450000"]
    svamp = load_prompts(str(shared_data / "math/svamp/test.jsonl"))
    assert svamp[0]["question"].startswith("There are 87 oranges") and svamp[0]["question"].endswith(
        "groups. How big is each group of bananas?"
    )
    tab = load_prompts(str(shared_data / "math/visual_tabmwp/test300.jsonl"))
    mc = [p for p in tab if p["choices"]]
    assert len(mc) == 58 and all(p["gold"] in "ABCDE" and p["gold_text"] in p["choices"] for p in mc)
    champ = next(p for p in mc if p["question"].startswith("Jordan has two dogs"))
    assert (champ["choices"], champ["gold"], champ["gold_text"]) == (["Sprinkles", "Champ"], "B", "Champ")
    assert all(len(p["images"]) == 1 and Path(p["images"][0]).is_file() for p in tab)
    asy = load_prompts(str(shared_data / "math/visual_math500_asy/problems.jsonl"))
    assert all(Path(i).is_file() for p in asy for i in p["images"])


def test_load_prompts_parquet_and_field_names(tmp_path):
    rows = [
        {"problem": "What is 2+2?", "gold": "4", "source": "toy"},
        {"query": "Pick the even one.", "options": {"A": "3", "B": "4"}, "label": "b"},
        {"prompt": "Prove that sqrt 2 is irrational.", "solution": "Suppose ... QED."},
        {"question": "Name the capital.", "answer": ""},
        {"question": "GSM style", "answer": "9 * 2 = 18\n#### 1,018"},
        {"question": "MATH style", "solution": "so $\\boxed{\\frac{1}{2}}$."},
        {"question": "float", "Answer": 145.0},
        {"nothing": "here"},
    ]
    url = str(tmp_path / "prompts.parquet")
    keys = sorted({k for r in rows for k in r})  # parquet rows share one schema: missing -> null
    storage.write_records(url, [{k: r.get(k) for k in keys} for r in rows])
    got = load_prompts(url, source="mine")
    assert [(p["source"], p["gold"], p["choices"]) for p in got] == [
        ("toy", "4", None),
        ("mine", "B", ["3", "4"]),
        ("mine", "Suppose ... QED.", None),
        ("mine", None, None),
        ("mine", "1018", None),
        ("mine", "\\frac{1}{2}", None),
        ("mine", "145", None),
    ]
    assert [classify_gold(p["gold"], p["choices"]).reason for p in got] == [
        None, None, "unverifiable_gold", "empty_gold", None, None, None,
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    assert [p["id"] for p in load_prompts(str(jsonl), source="mine")] == [got[0]["id"], got[1]["id"]]
    # any fsspec URL; relative image paths resolve against the file's folder
    row = {"question": "Which bar is tallest?", "image": "img/1.png", "answer": "3"}
    storage.write_bytes("memory://rsn/set/p.jsonl", (json.dumps(row) + "\n").encode())
    (mem,) = load_prompts("memory://rsn/set/p.jsonl")
    assert (mem["source"], mem["images"], mem["gold"]) == ("set/p", ["memory://rsn/set/img/1.png"], "3")
    with pytest.raises(ValueError):
        load_prompts(str(tmp_path / "p.csv"))


@pytest.mark.parametrize(
    "gold, choices, reason",
    [
        ("18", None, None),
        ("\\frac{\\sqrt{3}}{2}", None, None),
        ("\\text{4:30 p.m.}", None, None),
        ("yes", None, None),
        ("B", ["1", "2"], None),
        ("C", ["1", "2"], "unverifiable_gold"),  # names no option
        ("", None, "empty_gold"),
        (None, None, "empty_gold"),
        ("   ", None, "empty_gold"),
        ("Proof. By induction on n ... \\blacksquare", None, "unverifiable_gold"),
        ("We show that the sequence converges", None, "unverifiable_gold"),
        ("The function increases because its derivative is positive everywhere", None, "unverifiable_gold"),
        ("x" * 201, None, "unverifiable_gold"),
    ],
)
def test_classify_gold(gold, choices, reason):
    assert classify_gold(gold, choices).reason == reason
    assert classify_gold(gold, choices).keep is (reason is None)


# ---------------------------------------------------------------------------------------------
# decontamination
# ---------------------------------------------------------------------------------------------


def test_decontamination_math500_visual_variants(shared_data):
    math500 = read_jsonl(shared_data / "math/math500/test.jsonl")
    dec = NGramDecontaminator({r["unique_id"]: r["problem"] for r in math500}, n=13)
    assert len(dec) == 487 and dec.skipped == 13  # 13 problems shorter than 8 words
    asy = read_jsonl(shared_data / "math/visual_math500_asy/problems.jsonl")
    # diagram code replaced by '<image>': still caught, and matched to the right problem
    assert [dec.is_contaminated(a["question"]) for a in asy] == [(True, a["unique_id"]) for a in asy]


def test_decontamination_gsm8k(shared_data):
    gsm = read_jsonl(shared_data / "math/gsm8k/test.jsonl")
    dec = NGramDecontaminator(((f"gsm8k/{i}", r["question"]) for i, r in enumerate(gsm)), n=13)
    q = gsm[5]["question"]
    pasted = f"Solve this. {q.upper()}  Explain your reasoning step by step!"
    assert dec.is_contaminated(pasted) == (True, "gsm8k/5")  # case and spacing do not matter
    words = q.split()
    assert dec.is_contaminated(" ".join(words[:12])) == (False, None)  # 12 words < 13-gram
    assert dec.is_contaminated(" ".join(words[:13])) == (True, "gsm8k/5")
    assert dec.is_contaminated("") == (False, None)
    svamp = load_prompts(str(shared_data / "math/svamp/test.jsonl"))
    assert sum(dec.is_contaminated(p["question"])[0] for p in svamp) == 0
    dec8 = NGramDecontaminator({"short": "What is the sum of seven and five apples"}, n=13)
    assert dec8.is_contaminated("Q: what is the sum of seven and five apples?") == (True, "short")
    assert dec8.is_contaminated("what is the sum of seven and five") == (False, None)


# ---------------------------------------------------------------------------------------------
# quality filters
# ---------------------------------------------------------------------------------------------

GOOD = (
    "<think>\nLet me compute 9 * 2. That is 18, and 16 - 3 - 4 = 9 eggs are sold.\n</think>\n"
    "She makes \\boxed{18} dollars."
)


@pytest.mark.parametrize(
    "completion, finish, reason",
    [
        (GOOD, "stop", None),
        (GOOD, "length", "truncated"),
        ("<think>\nLet me compute 9 * 2 and keep going and going", "stop", "truncated"),
        ("<think>long reasoning here</think>\nI am not sure.", "stop", "truncated"),
        ("She makes \\boxed{18} dollars, computed as 9 times 2.", "stop", "format"),  # no think block
        ("<think></think>\nShe makes \\boxed{18} dollars per day.", "stop", "format"),  # empty reasoning
        ("Intro <think>reasoning goes here</think>\n\\boxed{18} is the final answer", "stop", "format"),
        ("<think>a</think><think>b</think>\\boxed{18} is the final answer", "stop", "format"),
        ("<think>" + "The sum is 9 plus 9 which gives eighteen. " * 60 + "</think>\\boxed{18}", "stop", "repetition"),
        ("<think>" + "1" * 300 + "</think>\\boxed{18}", "stop", "repetition"),
        (
            "<think>我们先计算每天剩下的鸡蛋数量 then we multiply the remaining eggs by the price per egg"
            " to get the daily income</think>\\boxed{18}",
            "stop",
            "language_mixing",
        ),
        ("<think>x</think>\\boxed{1}", "stop", "too_short"),
    ],
)
def test_check_cot(completion, finish, reason):
    assert check_cot(completion, finish, CoTFilterConfig()).reason == reason


def test_check_cot_order_and_config():
    # a truncated sample with a format problem and a loop reports 'truncated' first
    assert check_cot("1" * 500, "length").reason == "truncated"
    no_think = "She makes \\boxed{18} dollars, computed as 9 times 2."
    assert check_cot(no_think, "stop", CoTFilterConfig(require_think=False)).keep
    assert check_format(no_think, require_think=False).keep and not check_format(no_think).keep
    assert check_format("reasoning</think>answer").keep  # opening tag in the prompt
    assert check_truncated(GOOD, None).keep
    assert check_cot(GOOD, "stop", CoTFilterConfig(max_chars=60)).reason == "too_long"
    tok = CoTFilterConfig(min_tokens=10, max_tokens=100)
    assert check_length(GOOD, tok, n_tokens=5).reason == "too_short"
    assert check_length(GOOD, tok, n_tokens=500).reason == "too_long"
    assert check_length(GOOD, tok, n_tokens=50).keep and check_length(GOOD, tok).keep


def test_language_mixing_measure():
    zh = "<think>" + "我们先计算每天剩下的鸡蛋数量，然后乘以价格得到收入。" * 3
    zh += "</think>所以答案是 $\\boxed{18}$"
    assert script_shares(zh)["latin"] == 0 and check_language_mixing(zh).keep  # all-Chinese CoT is fine
    assert check_language_mixing(zh, CoTFilterConfig(expected_script="latin")).reason == "language_mixing"
    en_math = "We have \\(\\sin x = \\frac{1}{2}\\) so $x = \\pi/6$ and the answer follows directly from it " * 3
    assert script_shares(en_math)["cjk"] == 0 and check_language_mixing(en_math).keep
    assert check_language_mixing("短 short").keep  # too few units to judge


def test_filters_on_real_qwen_cots(qwen):
    """The real Qwen2.5-Math CoTs pass, except 3 whose correct answer is followed by a garbage tail
    of CJK/Korean/Latin tokens (problems 25, 45, 48): caught as language mixing."""
    cfg = CoTFilterConfig(require_think=False)
    verdicts = {(x["idx"], j): check_cot(c, "stop", cfg) for x in qwen for j, c in enumerate(x["code"])}
    dropped = {k: v.reason for k, v in verdicts.items() if not v.keep}
    # repetition runs before language_mixing, so every real CoT passed it, including the
    # enumeration-heavy ones (problem 28 sample 6: 42% of its words in repeated 10-grams)
    assert dropped == {(25, 1): "language_mixing", (45, 5): "language_mixing", (48, 3): "language_mixing"}


def test_repetition_on_real_gsm8k_solutions(shared_data):
    """Degenerate loops in the real GSM8K model solutions: 4 digit loops ('1818...', '3333...')
    and 5 templated line loops; all 9 are labelled wrong."""
    sols = read_jsonl(shared_data / "math/gsm8k/example_model_solutions.jsonl")
    flagged = [
        (i, m, s[m]["is_correct"])
        for i, s in enumerate(sols)
        for m in GSM8K_MODELS
        if not check_repetition(s[m]["solution"]).keep
    ]
    assert flagged == [
        (5, "175b_finetuning", False),
        (48, "175b_finetuning", False),
        (66, "6b_verification", False),
        (150, "6b_finetuning", False),
        (150, "175b_finetuning", False),
        (162, "175b_finetuning", False),
        (633, "6b_finetuning", False),
        (756, "175b_finetuning", False),
        (810, "6b_finetuning", False),
    ]


# ---------------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate, bucket, split",
    [
        (None, "unsolved", "unsolved"),
        (0.0, "unsolved", "unsolved"),
        (0.125, "hard", "rl"),
        (0.5, "medium", "rl"),
        (0.875, "easy", "rl"),
        (0.9, "easy", "rl"),  # MiMo: strictly above 90% leaves RL
        (0.95, "easy", "easy"),
        (1.0, "trivial", "easy"),
    ],
)
def test_difficulty_and_rl_split(rate, bucket, split):
    assert difficulty_bucket(rate) == bucket
    stats = PromptStats("p", 8, 0, 0, rate, ())
    assert rl_pool_split(stats) == split


def test_score_prompt_counts():
    prompt = {"id": "p1", "question": "q", "gold": "18"}
    comps = [GOOD, {"text": GOOD, "finish_reason": "length"}, "wrong", "none", GOOD]
    outs = [
        VerifyOutcome(True, None),
        VerifyOutcome(True, None),
        VerifyOutcome(False, "wrong_answer"),
        VerifyOutcome(None, "verify_timeout"),
        VerifyOutcome(True, None),
    ]
    st = score_prompt(prompt, comps, outs)
    assert (st.n, st.n_correct, st.n_undecided, st.pass_rate) == (5, 3, 1, 0.75)
    assert st.accepted == (0, 4)
    assert st.rejected == {1: "truncated", 2: "wrong_answer", 3: "verify_timeout"}
    assert st.difficulty == "easy" and rl_pool_split(st) == "rl"
    undecided = score_prompt(prompt, ["a"], [VerifyOutcome(None, "verify_error")])
    assert undecided.pass_rate is None and rl_pool_split(undecided) == "unsolved"
    with pytest.raises(ValueError):
        score_prompt(prompt, ["a"], [])


def test_rejection_sampling_on_real_qwen(shared_data, qwen, pool):
    prompts = load_prompts(str(shared_data / "math/qwen_math_cot_samples/math_cot_100.jsonl"))
    outcomes = pool.verify_many([(p["gold"], extract_answer(c)) for p, x in zip(prompts, qwen) for c in x["code"]])
    cfg = CoTFilterConfig(require_think=False)
    stats = [
        score_prompt(p, x["code"], outcomes[8 * i : 8 * i + 8], cfg) for i, (p, x) in enumerate(zip(prompts, qwen))
    ]
    assert Counter(rl_pool_split(s) for s in stats) == {"easy": 86, "rl": 11, "unsolved": 3}
    assert Counter(s.difficulty for s in stats) == {"trivial": 86, "easy": 3, "medium": 5, "hard": 3, "unsolved": 3}
    assert [x["idx"] for x, s in zip(qwen, stats) if rl_pool_split(s) == "unsolved"] == [3, 84, 85]
    assert sum(s.n_correct for s in stats) == 729 and sum(len(s.accepted) for s in stats) == 726
    rejected = Counter(r for s in stats for r in s.rejected.values())
    assert rejected == {"wrong_answer": 71, "language_mixing": 3}


def test_to_sft_sample():
    prompt = {"id": "p1", "source": "toy", "question": "Pick one.", "gold": "B", "choices": ["3", "4"], "images": []}
    s = to_sft_sample(prompt, GOOD, system="Think step by step.")
    assert s["messages"] == [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "Pick one.\n\nChoices:\n(A) 3\n(B) 4"},
        {"role": "assistant", "content": GOOD},
    ]
    assert (s["prompt_id"], s["source"], s["gold"], s["images"]) == ("p1", "toy", "B", [])
    assert s["id"] == to_sft_sample(prompt, {"text": GOOD})["id"] != to_sft_sample(prompt, GOOD + " ")["id"]
    vis = to_sft_sample({"id": "p2", "question": "What is shown?", "images": ["a.png", "b.png"]}, GOOD)
    assert vis["messages"][0] == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is shown?"}],
    }
    assert vis["images"] == ["a.png", "b.png"] and len(vis["messages"]) == 2
    assert format_user_prompt({"question": "q"}) == "q"
