"""A deterministic engine for logic tests only (never used by the pipelines themselves).

It answers GSM8K questions by lookup in the real test split, with a fixed pattern of samples per
prompt: correct, wrong, correct but truncated, correct without <think>. Plugged in through the
'factory' engine kind: EngineSpec("factory", "scripted_engine:ScriptedEngine").
"""

from __future__ import annotations

import json

from conftest import shared_data_dir
from curation import generation

GSM8K = shared_data_dir() / "math" / "gsm8k" / "test.jsonl"


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


class EchoCaptionEngine:
    """Re-captions by echoing the original caption the prompt carries, with a fixed prefix; answers
    'length' for captions containing 'TRUNCATE' (a rejected re-caption). Logic tests only."""

    model_id = "echo"

    def generate(self, requests, params):  # noqa: ANN001
        out = []
        for req in requests:
            content = req.messages[-1]["content"]
            text = " ".join(c["text"] for c in content if c.get("type") == "text") if isinstance(content, list) else content
            original = text.split('"')[1] if text.count('"') >= 2 else text  # USER_TEMPLATE quotes the original
            finish = "length" if "TRUNCATE" in original else "stop"
            out.append(generation.GenerationResult(req.request_id, [generation.Completion(
                f"A photograph: {original}", finish, 10, 10)], self.model_id))
        return out
