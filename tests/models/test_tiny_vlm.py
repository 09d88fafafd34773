"""TinyUnderstanding: batched answers, determinism, constraints, save/load."""

import numpy as np
import pytest
import torch

from srum_ray.models.constraints import is_complete_score
from PIL import Image

from srum_ray.config.schema import TinyModelConfig
from srum_ray.models.base import AnswerConstraint
from srum_ray.models.tiny_vlm import (
    PROMPT_TEMPLATE,
    TinyUnderstanding,
    choice_first_tokens,
)

PROMPTS = [
    "Score the layout from -1 to 1.",
    "What object is in region 2?",
    "Is there a red cube left of a ball? Answer yes or no.",
    "Rate it",
]


@pytest.fixture(scope="module")
def vlm():
    return TinyUnderstanding(TinyModelConfig())


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in PROMPTS]


def test_answers_are_batched_deterministic_and_left_padded(vlm, images):
    answers = vlm.answer(images, PROMPTS, max_new_tokens=8)
    assert len(answers) == 4 and all(isinstance(a, str) and a for a in answers)
    assert vlm.answer(images, PROMPTS, max_new_tokens=8) == answers
    # with left padding a prompt's greedy answer does not depend on its batch neighbours
    assert [vlm.answer([im], [p], max_new_tokens=8)[0] for im, p in zip(images, PROMPTS)] == answers
    assert vlm.answer([], [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="4 images but 1 prompts"):
        vlm.answer(images, PROMPTS[:1], max_new_tokens=4)


def test_seeded_sampling(vlm, images):
    sampled = vlm.answer(images, PROMPTS, max_new_tokens=8, temperature=1.0, seed=5)
    assert vlm.answer(images, PROMPTS, max_new_tokens=8, temperature=1.0, seed=5) == sampled
    others = [
        vlm.answer(images, PROMPTS, max_new_tokens=8, temperature=1.0, seed=s) for s in (6, 7)
    ]
    assert any(o != sampled for o in others)


def test_number_constraint_constrains(vlm, images):
    free = vlm.answer(images, PROMPTS, max_new_tokens=12)
    assert not all(is_complete_score(a) for a in free)  # the random model alone writes anything
    for temperature, seed in ((0.0, None), (1.0, 3)):
        numbers = vlm.answer(
            images,
            PROMPTS,
            max_new_tokens=12,
            constraint=AnswerConstraint("number"),
            temperature=temperature,
            seed=seed,
        )
        assert len(numbers) == 4
        assert all(is_complete_score(a) for a in numbers), numbers
        assert all(-1.0 <= float(a) <= 1.0 for a in numbers), numbers


def test_choice_constraint_picks_the_best_allowed_first_token(vlm, images):
    choices = ("red", "green", "blue")
    constraint = AnswerConstraint("choice", choices)
    got = vlm.answer(images, PROMPTS, max_new_tokens=8, constraint=constraint)
    assert all(g in choices for g in got)
    # by hand: the argmax of the next-token logits restricted to the choices' first tokens
    firsts = choice_first_tokens(vlm.tokenizer, choices)
    inputs = vlm.processor(
        images=images,
        text=[PROMPT_TEMPLATE.format(prompt=p) for p in PROMPTS],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = vlm.model(**inputs).logits[:, -1, firsts]
    assert got == [choices[i] for i in logits.argmax(-1).tolist()]
    # sampling among the choices reaches more than one of them
    sampled = [
        vlm.answer(
            images, PROMPTS, max_new_tokens=8, temperature=1.0, seed=s, constraint=constraint
        )
        for s in range(3)
    ]
    assert all(a in choices for batch in sampled for a in batch)
    assert len({a for batch in sampled for a in batch}) > 1


def test_choice_errors(vlm, images):
    with pytest.raises(ValueError, match="share a first token"):
        same_start = AnswerConstraint("choice", ("yes", "yes!"))
        vlm.answer(images[:1], PROMPTS[:1], max_new_tokens=1, constraint=same_start)
    with pytest.raises(ValueError, match="at least one choice"):
        vlm.answer(images[:1], PROMPTS[:1], max_new_tokens=1, constraint=AnswerConstraint("choice"))


def test_frozen_and_seeded():
    a, b = TinyUnderstanding(TinyModelConfig()), TinyUnderstanding(TinyModelConfig(seed=1))
    assert all(not p.requires_grad for p in a.model.parameters())
    w = "lm_head.weight"
    again = TinyUnderstanding(TinyModelConfig())
    assert torch.equal(a.model.state_dict()[w], again.model.state_dict()[w])
    assert not torch.equal(a.model.state_dict()[w], b.model.state_dict()[w])


def test_save_and_load_round_trip(vlm, images, tmp_path):
    vlm.save_pretrained(tmp_path / "u")
    loaded = TinyUnderstanding.from_pretrained(tmp_path / "u")
    kw = {"max_new_tokens": 8}
    assert loaded.answer(images, PROMPTS, **kw) == vlm.answer(images, PROMPTS, **kw)
    num = AnswerConstraint("number")
    want = vlm.answer(images, PROMPTS, constraint=num, **kw)
    assert loaded.answer(images, PROMPTS, constraint=num, **kw) == want
    (tmp_path / "u" / "model" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model/model.safetensors"):
        TinyUnderstanding.from_pretrained(tmp_path / "u")
