"""Reward router: exact rewards on hand-made boxes, points, counts, intervals and math answers."""

from __future__ import annotations

import math

import pytest

from trainer import rewards as R

GOLD = [0, 0, 10, 10]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("[0, 0, 10, 10]", 1.0),  # same box: GIoU 1
        ('{"bbox_2d": [0, 0, 10, 10], "label": "cat"}', 1.0),  # Qwen2.5-VL's JSON
        ("(0,0),(10,10)", 1.0),
        ("[0, 0, 5, 10]", 0.75),  # IoU 0.5, hull = union: GIoU 0.5
        ("[5, 0, 15, 10]", (1 / 3 + 1) / 2),  # IoU 50/150, hull = union
        ("[10, 0, 20, 10]", 0.5),  # touching: IoU 0, hull 200 = union: GIoU 0
        ("[20, 20, 30, 30]", (-700 / 900 + 1) / 2),  # apart: hull 900, union 200
        ("[0, 0, 2, 2] then [0, 0, 10, 10]", 1.0),  # the last box counts
        ("<think>[20, 20, 30, 30]</think>[0, 0, 10, 10]", 1.0),  # boxes in the reasoning do not
        ("<think>[0, 0, 10, 10]", 0.0),  # never left the reasoning
        ("[10, 10, 0, 0]", 0.0),  # x2 < x1
        ("no box here", 0.0),
        ("[1, 2]", 0.0),  # a point is not a box
    ],
)
def test_grounding_giou_mapped_to_unit_interval(completion, expected):
    assert math.isclose(R.grounding_reward(completion, GOLD), expected, abs_tol=1e-12)


def test_giou_and_iou_values():
    assert R.giou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert math.isclose(R.giou((0, 0, 1, 1), (99, 99, 100, 100)), -(10000 - 2) / 10000)  # -> -1 far apart
    assert R.iou((0, 0, 10, 10), (0, 0, 5, 10)) == 0.5
    assert R.giou((1, 1, 1, 1), (1, 1, 1, 1)) == 1.0 and R.giou((1, 1, 1, 1), (2, 2, 2, 2)) == -1.0
    assert R.grounding_reward("[0, 0, 10, 10]", "[0, 0, 10, 10]") == 1.0  # gold as text (RL rows)
    with pytest.raises(ValueError, match="not \\[x1, y1, x2, y2\\]"):
        R.grounding_reward("[0, 0, 1, 1]", [5, 5, 1, 1])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("(5, 5)", 1.0),
        ('{"point_2d": [10, 0]}', 1.0),  # edges count
        ("[10.5, 3]", 0.0),
        ("(3, 4) no, (-1, 4)", 0.0),  # the last point counts
        ("[0, 0, 10, 10]", 0.0),  # a box is not a point
        ("nothing", 0.0),
    ],
)
def test_point_in_box(completion, expected):
    assert R.point_reward(completion, GOLD) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("There are 3 dogs.", "3", 1.0),
        ("I count \\boxed{4}.", 4, 1.0),
        ("<think>Maybe 2, or 5.</think> The answer is 3.", 3, 1.0),
        ("<think>3</think> I see two.", 3, 0.0),
        ("three", 3, 1.0),
        ("1,200 birds", 1200, 1.0),
        ("3.5 apples", 3, 0.0),  # not an integer count
        ("about 3 or 4", 3, 0.0),  # the last stated number counts
        ("none", 0, 0.0),
    ],
)
def test_counting_exact_match(completion, gold, expected):
    assert R.counting_reward(completion, gold) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("[00:05, 00:15]", "[00:05, 00:15]", 1.0),
        ("The event happens at [00:10, 00:20].", "[00:05, 00:15]", 5 / 15),
        ("[00:20, 00:30]", "[00:05, 00:15]", 0.0),
        ("[01:00, 01:30]", [60, 120], 0.5),
        ("[0:00:30.5, 0:00:31.5]", [30, 32], 0.5),  # h:mm:ss with decimals
        ("[00:15, 00:05]", "[00:05, 00:15]", 0.0),  # end before start
        ("00:05 to 00:15", "[00:05, 00:15]", 0.0),  # not the [mm:ss, mm:ss] form
    ],
)
def test_temporal_iou(completion, gold, expected):
    assert math.isclose(R.temporal_reward(completion, gold), expected, abs_tol=1e-12)


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("<think>9 * 2 = 18</think> The final answer is \\boxed{18}.", "18", 1.0),
        ("So the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("#### 72", "72", 1.0),
        ("\\boxed{17}", "18", 0.0),
        ("<think>\\boxed{18}", "18", 0.0),  # unfinished reasoning
        ("I don't know", "18", 0.0),
        ("The answer is (B).", "B", 1.0),
    ],
)
def test_math_reward(completion, gold, expected):
    assert R.math_reward(completion, gold) == expected


def test_math_reward_through_a_verifier_pool():
    from curation.math_verify_pool import VerifierPool

    with VerifierPool(workers=1, timeout_s=10) as pool:
        router = R.RewardRouter(verifier=pool)
        got = router.score_batch([{"task": "math", "gold": "\\frac{1}{2}"}] * 2, ["\\boxed{0.5}", "\\boxed{2}"])
    assert got == [1.0, 0.0]


def test_router_routes_by_task_and_feeds_trl():
    router = R.RewardRouter(preference_model=lambda prompts, responses: [len(r) - 3.0 for r in responses])
    samples = [
        {"task": "math", "gold": "6"},
        {"task": "grounding", "gold": "[0, 0, 10, 10]"},
        {"task": "point", "gold": "[0, 0, 10, 10]"},
        {"task": "counting", "gold": "2"},
        {"task": "temporal", "gold": "[00:00, 00:10]"},
        {"task": "preference", "prompt": "Say hi"},
    ]
    completions = ["\\boxed{6}", "[0, 0, 5, 10]", "(1, 1)", "two", "[00:00, 00:05]", "hi!"]
    assert router.score_batch(samples, completions) == [1.0, 0.75, 1.0, 1.0, 0.5, 0.5]
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    tasks = [s["task"] for s in samples]
    golds = [s.get("gold") for s in samples]
    funcs = router.reward_funcs(["math", "preference"])
    assert [f.__name__ for f in funcs] == ["math", "preference"]
    prompts = [[{"role": "user", "content": "q"}]] * 6
    assert funcs[0](prompts, chat, task=tasks, gold=golds) == [1.0, None, None, None, None, None]
    assert funcs[1](prompts, chat, task=tasks, gold=golds) == [None] * 5 + [0.5]
    assert R.preference_reward([0.0, 2.0, -800.0]) == [0.5, 1 / (1 + math.exp(-2.0)), 0.0]
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        router.score({"task": "ocr"}, "x")
    with pytest.raises(ValueError, match="needs a preference_model"):
        R.RewardRouter().score({"task": "preference", "prompt": "p"}, "x")
