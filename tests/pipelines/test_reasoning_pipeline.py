"""Long-CoT rejection sampling through Beam on real GSM8K prompts.

Generation is a deterministic scripted engine defined here (test-only, plugged in through the
'factory' engine kind) so that the outcome of every sample is known: one correct, one wrong, one
correct but truncated, one correct without <think>. Real engines are tested in
tests/curation/test_generation.py and end to end in tests/assets/test_reasoning_assets.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from curation import generation, storage
from pipelines import reasoning as pipe
from pipelines.common import manifest_url, quarantine_url
from pipelines.generation import EngineSpec

GSM8K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "math" / "gsm8k" / "test.jsonl"


def _gold(answer: str) -> str:
    return answer.split("####")[-1].strip().replace(",", "")


class ScriptedEngine:
    """Answers GSM8K questions by lookup, with a fixed pattern of good and bad samples."""

    model_id = "scripted"

    def __init__(self) -> None:
        rows = [json.loads(x) for x in GSM8K.read_text().splitlines()]
        self.gold = {r["question"].strip(): _gold(r["answer"]) for r in rows}

    def generate(self, requests, params):  # noqa: ANN001
        out = []
        for req in requests:
            text = req.messages[-1]["content"]
            g = next(v for q, v in self.gold.items() if q in text)
            think = "<think>Let me work through the quantities step by step and check the arithmetic.</think>"
            samples = [
                (f"{think} The answer is \\boxed{{{g}}}.", "stop"),
                (f"{think} The answer is \\boxed{{{int(float(g)) + 1}}}.", "stop"),
                (f"{think} The answer is \\boxed{{{g}}}", "length"),
                (f"The answer is \\boxed{{{g}}}. I computed it directly without writing reasoning.", "stop"),
            ][: params.n]
            out.append(generation.GenerationResult(
                request_id=req.request_id, model=self.model_id,
                completions=[generation.Completion(t, f, 10, 20) for t, f in samples]))
        return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reasoning")
    rows = [json.loads(x) for x in GSM8K.read_text().splitlines()][:10]
    drop = root / "landing" / "reasoning" / "d1"
    drop.mkdir(parents=True)
    lines = [{"question": r["question"], "answer": r["answer"], "source": "gsm8k"} for r in rows]
    lines.append({"question": "Prove that there are infinitely many primes.", "answer": "Proof: suppose finitely many ...", "source": "proofs"})
    (drop / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    bench = root / "benchmarks" / "texts"
    bench.mkdir(parents=True)
    (bench / "gsm8k_test.jsonl").write_text(json.dumps({"id": "q3", "question": rows[3]["question"]}) + "\n")
    return root


SETTINGS = pipe.ReasoningSettings(engine=EngineSpec("factory", "test_reasoning_pipeline:ScriptedEngine"), verify_workers=1)


def test_prompts_are_checked_with_reasons(root: Path) -> None:
    pipe.run_prompts(str(root), "d1", SETTINGS)
    kept = storage.read_records(manifest_url(str(root), "reasoning_prompts", "d1"))
    q = storage.read_records(quarantine_url(str(root), "reasoning_prompts", "d1"))
    assert len(kept) == 9
    assert sorted(r["reason"] for r in q) == ["benchmark_contamination", "unverifiable_gold"]
    assert next(r for r in q if r["reason"] == "benchmark_contamination")["error"] == "overlaps gsm8k_test:q3"


def test_rejection_sampling_keeps_only_verified_well_formed_samples(root: Path) -> None:
    if not storage.exists(manifest_url(str(root), "reasoning_prompts", "d1")):
        pipe.run_prompts(str(root), "d1", SETTINGS)
    pipe.run_candidates(str(root), "d1", SETTINGS)
    cands = storage.read_records(manifest_url(str(root), "cot_candidates", "d1"))
    assert len(cands) == 9 * 4
    pipe.run_verified(str(root), "d1", SETTINGS)
    accepted = storage.read_records(manifest_url(str(root), "cot_verified", "d1"))
    rejected = storage.read_records(quarantine_url(str(root), "cot_verified", "d1"))
    assert [r["sample_index"] for r in accepted] == [0] * 9
    assert Counter(r["reason"] for r in rejected) == {"wrong_answer": 9, "truncated": 9, "no_answer": 9}
    stats = storage.read_records(manifest_url(str(root), "cot_prompt_stats", "d1"))
    assert {(s["n"], s["n_correct"], round(s["pass_rate"], 2), s["pool"]) for s in stats} == {(4, 2, 0.5, "rl")}
    sft = json.loads(accepted[0]["sft_sample"])
    assert [m["role"] for m in sft["messages"]][-2:] == ["user", "assistant"] and "<think>" in sft["messages"][-1]["content"]

    index = pipe.run_sft_shards(str(root), ["d1"], SETTINGS)
    assert index.num_samples == 9
    pool = pipe.run_rl_pool(str(root), ["d1"], SETTINGS)
    assert Counter(r["pool"] for r in pool) == {"rl": 9}
