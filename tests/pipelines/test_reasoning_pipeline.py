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

from curation import storage
from pipelines import reasoning as pipe
from pipelines.common import manifest_url, quarantine_url
from pipelines.generation import EngineSpec

from scripted_engine import GSM8K


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


SETTINGS = pipe.ReasoningSettings(engine=EngineSpec("factory", "scripted_engine:ScriptedEngine"), verify_workers=1)


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
    assert pipe.run_rl_pool(str(root), ["d1"], SETTINGS) == {"rl": 9}
    pool = storage.read_records(manifest_url(str(root), "rl_prompt_pool", "all"))
    assert Counter(r["pool"] for r in pool) == {"rl": 9} and len({r["id"] for r in pool}) == 9
