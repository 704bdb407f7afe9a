"""Bradley-Terry reward model: trained on CPU from a handful of preference pairs, served in process."""

from __future__ import annotations

import pytest

from trainer.reward_model import BTRewardModel, PreferencePair, bt_loss, pairs_from_records, train_bradley_terry
from trainer.rewards import RewardRouter

PAIRS = [
    PreferencePair("What is 2+2?", "The answer is 4.", "I do not know."),
    PreferencePair("Describe the image.", "A cat sitting on a wooden table.", "No."),
    PreferencePair("Solve 3y - 7 = 11.", "3y = 18, so y = 6.", "whatever"),
    PreferencePair([{"role": "user", "content": "How many dogs?"}], "Two dogs are running.", "??"),
]


@pytest.fixture(scope="module")
def trained(tiny_models):
    model = BTRewardModel.from_causal_lm(tiny_models["lm"], seed=0)
    before = float(bt_loss(model, PAIRS).detach())
    losses = train_bradley_terry(model, PAIRS, steps=25, lr=1e-3, batch_size=4, seed=0)
    return model, before, losses


def test_training_separates_chosen_from_rejected(trained):
    model, before, losses = trained
    assert abs(before - 0.6931) < 0.05  # a fresh head scores both sides about equally: log 2
    assert losses[-1] < 0.05 < before and losses[-1] < losses[0]
    prompts = [p.prompt for p in PAIRS]
    chosen, rejected = model.score(prompts, [p.chosen for p in PAIRS]), model.score(prompts, [p.rejected for p in PAIRS])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_served_in_process_through_the_router(trained, tmp_path):
    model, _, _ = trained
    router = RewardRouter(preference_model=model.as_preference_model())
    samples = [{"task": "preference", "prompt": p.prompt} for p in PAIRS]
    good = router.score_batch(samples, [p.chosen for p in PAIRS])
    bad = router.score_batch(samples, [p.rejected for p in PAIRS])
    assert all(0.0 < b < 0.5 < g < 1.0 for g, b in zip(good, bad))
    loaded = BTRewardModel.load(model.save(tmp_path / "bt"))
    prompts = [p.prompt for p in PAIRS]
    assert loaded.score(prompts, [p.chosen for p in PAIRS]) == model.score(prompts, [p.chosen for p in PAIRS])


def test_seeded_and_records(tiny_models):
    a = BTRewardModel.from_causal_lm(tiny_models["lm"], seed=3)
    b = BTRewardModel.from_causal_lm(tiny_models["lm"], seed=3)
    pairs = pairs_from_records([{"prompt": "p", "chosen": "yes", "rejected": "no"}])
    assert train_bradley_terry(a, pairs, steps=3, seed=1) == train_bradley_terry(b, pairs, steps=3, seed=1)
    with pytest.raises(ValueError, match="no preference pairs"):
        train_bradley_terry(a, [], steps=1)
