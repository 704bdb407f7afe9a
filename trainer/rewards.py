"""Reward router for MORL: each RL sample names its ``task``; every reward lies in [0, 1].

| task        | answer read from the completion (after ``</think>``) | reward |
|-------------|------------------------------------------------------|--------|
| math        | :func:`curation.reasoning.extract_answer`            | 1 if math_verify(gold, answer) else 0 |
| grounding   | last box ``[x1, y1, x2, y2]`` / ``(x1,y1),(x2,y2)``  | (GIoU + 1) / 2 |
| point       | last point ``(x, y)`` / ``[x, y]``                   | 1 if inside the gold box (edges included) else 0 |
| counting    | the extracted answer, else the last integer / number word | 1 if equal to the gold count else 0 |
| temporal    | last ``[mm:ss, mm:ss]`` (``h:mm:ss`` and decimals too) | IoU of the two intervals |
| preference  | the whole response                                   | sigmoid(Bradley-Terry score) |

GIoU (Rezatofighi et al. 2019) is IoU - |C \\ (A u B)| / |C| with C the smallest box enclosing both;
it lies in [-1, 1] (1: same box; -> -1: tiny boxes far apart), so (GIoU + 1) / 2 maps it to [0, 1]
monotonically, keeping GIoU's gradient signal for non-overlapping boxes that plain IoU (0) lacks.
A missing or malformed answer (no box, x2 < x1, end before start) gets 0.

A Bradley-Terry score s means P(response beats a score-0 response) = sigmoid(s), so the preference
reward is that probability. The model is any callable ``(prompts, responses) -> scores`` (in process:
:class:`trainer.reward_model.BTRewardModel`, or an HTTP client with the same call).

math_verify runs without its signal timeouts (they fail off the main thread). Policy outputs are
untrusted, so give the router a :class:`curation.math_verify_pool.VerifierPool` to bound each check's
time in worker processes; without one, checks run in process (trusted inputs, tests).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from curation.math_verify_pool import verify as math_verify
from curation.reasoning import answer_part, extract_answer

TASKS: tuple[str, ...] = ("math", "grounding", "point", "counting", "temporal", "preference")

_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOX_RE = re.compile(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]")
_BOX_PAIR_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*(?:to\s*)?\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_POINT_RE = re.compile(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]")
_INT_RE = re.compile(r"(?<![\d.])[-+]?\d+(?:,\d{3})*(?![\d.]*\d)")
_TS = r"(?:(\d+):)?(\d{1,2}):(\d{2}(?:\.\d+)?)"
_SPAN_RE = re.compile(rf"\[\s*{_TS}\s*(?:,|-|to)\s*{_TS}\s*\]")
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORD_RE = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)

Box = tuple[float, float, float, float]


def _tail(completion: str) -> str:
    """The part of a completion that holds the answer: after ``</think>``; all of it without think
    tags; nothing when the reasoning never closed (``<think>`` without ``</think>``)."""
    part = answer_part(completion)
    return "" if part is None else part


# ---------------------------------------------------------------------------------------------------
# parsing


def parse_box(text: str) -> Box | None:
    """The last box in ``text``: ``[x1, y1, x2, y2]`` (also in parentheses or Qwen's
    ``{"bbox_2d": [...]}``) or ``(x1, y1), (x2, y2)``; None when absent or x2 < x1 or y2 < y1."""
    cands = [(m.start(), m.groups()) for m in _BOX_RE.finditer(text)]
    cands += [(m.start(), m.groups()) for m in _BOX_PAIR_RE.finditer(text)]
    if not cands:
        return None
    x1, y1, x2, y2 = (float(v) for v in max(cands, key=lambda c: c[0])[1])
    if x2 < x1 or y2 < y1:
        return None
    return (x1, y1, x2, y2)


def as_box(gold: Any) -> Box:
    """A gold box from [x1, y1, x2, y2] numbers or a string holding one."""
    if isinstance(gold, str):
        box = parse_box(gold)
        if box is None:
            raise ValueError(f"gold box {gold!r} is not [x1, y1, x2, y2] with x1 <= x2, y1 <= y2")
        return box
    vals = [float(v) for v in gold]
    if len(vals) != 4 or vals[2] < vals[0] or vals[3] < vals[1]:
        raise ValueError(f"gold box {gold!r} is not [x1, y1, x2, y2] with x1 <= x2, y1 <= y2")
    return (vals[0], vals[1], vals[2], vals[3])


def parse_point(text: str) -> tuple[float, float] | None:
    """The last ``(x, y)`` / ``[x, y]`` in ``text`` (Qwen's ``{"point_2d": [x, y]}`` included)."""
    ms = list(_POINT_RE.finditer(text))
    if not ms:
        return None
    return (float(ms[-1].group(1)), float(ms[-1].group(2)))


def parse_count(text: str) -> int | None:
    """The count a completion states: its extracted final answer (boxed, 'the answer is'), else the
    last integer after ``</think>``, else the last number word (zero..twenty)."""
    ans = extract_answer(text)
    for cand in ([ans] if ans else []) + [_tail(text)]:
        ints = _INT_RE.findall(cand)
        if ints:
            return int(ints[-1].replace(",", ""))
        words = _WORD_RE.findall(cand)
        if words:
            return _WORDS[words[-1].lower()]
    return None


def _seconds(h: str | None, m: str, s: str) -> float:
    return (int(h) * 3600 if h else 0) + int(m) * 60 + float(s)


def parse_span(text: str) -> tuple[float, float] | None:
    """The last ``[mm:ss, mm:ss]`` interval in seconds; None when absent or end < start."""
    ms = list(_SPAN_RE.finditer(text))
    if not ms:
        return None
    g = ms[-1].groups()
    start, end = _seconds(*g[:3]), _seconds(*g[3:])
    return None if end < start else (start, end)


def as_span(gold: Any) -> tuple[float, float]:
    if isinstance(gold, str):
        span = parse_span(gold)
        if span is None:
            raise ValueError(f"gold interval {gold!r} is not [mm:ss, mm:ss] with start <= end")
        return span
    start, end = (float(v) for v in gold)
    if end < start:
        raise ValueError(f"gold interval {gold!r} ends before it starts")
    return (start, end)


# ---------------------------------------------------------------------------------------------------
# geometry


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a: Box, b: Box) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def giou(a: Box, b: Box) -> float:
    """Generalized IoU in [-1, 1]; -1 when both boxes are degenerate points apart, by convention."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    hull = _area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    if hull <= 0:
        return 1.0 if a == b else -1.0
    return (inter / union if union > 0 else 0.0) - (hull - union) / hull


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


# ---------------------------------------------------------------------------------------------------
# rewards


def math_reward(completion: str, gold: str, verifier: Any = None) -> float:
    """1.0 when the extracted final answer verifies against ``gold`` (math_verify, gold first)."""
    ans = extract_answer(completion)
    if ans is None:
        return 0.0
    if verifier is not None:
        return 1.0 if verifier.verify_many([(str(gold), ans)])[0].correct else 0.0
    return 1.0 if math_verify(str(gold), ans) else 0.0


def grounding_reward(completion: str, gold: Any) -> float:
    """(GIoU(pred, gold) + 1) / 2; 0 without a valid box."""
    box = parse_box(_tail(completion))
    return 0.0 if box is None else (giou(box, as_box(gold)) + 1.0) / 2.0


def point_reward(completion: str, gold: Any) -> float:
    """1.0 when the stated point lies in the gold box (edges included)."""
    pt = parse_point(_tail(completion))
    if pt is None:
        return 0.0
    x1, y1, x2, y2 = as_box(gold)
    return 1.0 if x1 <= pt[0] <= x2 and y1 <= pt[1] <= y2 else 0.0


def counting_reward(completion: str, gold: Any) -> float:
    n = parse_count(completion)
    return 1.0 if n is not None and n == int(str(gold).strip()) else 0.0


def temporal_reward(completion: str, gold: Any) -> float:
    span = parse_span(_tail(completion))
    return 0.0 if span is None else temporal_iou(span, as_span(gold))


def preference_reward(scores: Sequence[float]) -> list[float]:
    """Bradley-Terry scores -> P(beats a score-0 response) = sigmoid(score)."""
    return [1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s)) for s in scores]


def completion_text(completion: Any) -> str:
    """TRL passes a string, or for chat prompts a list of messages (the assistant turn)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        return str(content)
    return str(completion)


@dataclass
class RewardRouter:
    """Routes (sample, completion) to its task's reward. ``preference_model(prompts, responses)``
    returns Bradley-Terry scores; ``verifier`` is a VerifierPool for untrusted math answers."""

    preference_model: Callable[[Sequence[Any], Sequence[str]], Sequence[float]] | None = None
    verifier: Any = None

    def score(self, sample: Mapping[str, Any], completion: Any) -> float:
        return self.score_batch([sample], [completion])[0]

    def score_batch(self, samples: Sequence[Mapping[str, Any]], completions: Sequence[Any]) -> list[float]:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
        texts = [completion_text(c) for c in completions]
        out: list[float | None] = [None] * len(samples)
        pref: list[int] = []
        for i, (s, text) in enumerate(zip(samples, texts)):
            task = s.get("task")
            if task == "preference":
                pref.append(i)
            elif task == "math":
                out[i] = math_reward(text, s["gold"], self.verifier)
            elif task == "grounding":
                out[i] = grounding_reward(text, s["gold"])
            elif task == "point":
                out[i] = point_reward(text, s["gold"])
            elif task == "counting":
                out[i] = counting_reward(text, s["gold"])
            elif task == "temporal":
                out[i] = temporal_reward(text, s["gold"])
            else:
                raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
        if pref:
            if self.preference_model is None:
                raise ValueError("a 'preference' sample needs a preference_model (Bradley-Terry reward model)")
            scores = self.preference_model([samples[i].get("prompt") for i in pref], [texts[i] for i in pref])
            for i, r in zip(pref, preference_reward([float(s) for s in scores])):
                out[i] = r
        return [float(r) for r in out]  # type: ignore[arg-type]

    def reward_func(self, task: str) -> Callable[..., list[float | None]]:
        """A TRL reward function for one task: its reward on that task's rows, None elsewhere, so
        GRPOTrainer logs ``rewards/<task>/mean`` per task and sums one reward per row."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
        return _TaskReward(self, task)

    def reward_funcs(self, tasks: Sequence[str]) -> list[Callable[..., list[float | None]]]:
        return [self.reward_func(t) for t in tasks]


class _TaskReward:
    """Picklable TRL reward function (TRL names it by ``__name__``)."""

    def __init__(self, router: RewardRouter, task: str) -> None:
        self.router, self.task, self.__name__ = router, task, task

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], task: Sequence[str] | None = None,
                 **kwargs: Any) -> list[float | None]:
        if task is None:
            raise ValueError("RL samples need a 'task' column")
        rows = [i for i, t in enumerate(task) if t == self.task]
        out: list[float | None] = [None] * len(completions)
        if not rows:
            return out
        keys = [k for k in kwargs if isinstance(kwargs[k], list) and len(kwargs[k]) == len(completions)]
        samples = [{"task": self.task, "prompt": prompts[i], **{k: kwargs[k][i] for k in keys}} for i in rows]
        for i, r in zip(rows, self.router.score_batch(samples, [completions[i] for i in rows])):
            out[i] = r
        return out
