"""Judge tests with a scripted understanding model (a test double of our own interface)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest
from PIL import Image

from srum_ray.config.schema import JudgeConfig
from srum_ray.judging import prompts as P
from srum_ray.judging.judge import (
    GUIDED_NUMBER_TOKENS,
    GUIDED_OBJECT_TOKENS,
    Judge,
    JudgeStats,
    derive_seed,
)
from srum_ray.models.base import AnswerConstraint, UnderstandingModel
from srum_ray.types import FILTERED, MISSING, PARSED, RETRIED, Box, SampleRecord


@dataclass
class Call:
    prompts: list[str]
    sizes: list[tuple[int, int]]
    max_new_tokens: int
    constraint: AnswerConstraint | None
    temperature: float
    seed: int | None


class ScriptedModel(UnderstandingModel):
    """Answers with ``respond(prompt, call_index)`` and records every call."""

    def __init__(self, respond: Callable[[str, int], str]):
        self.respond = respond
        self.calls: list[Call] = []

    def answer(self, images, prompts, *, max_new_tokens, constraint=None, temperature=0.0, seed=None):
        self.calls.append(
            Call(list(prompts), [im.size for im in images], max_new_tokens, constraint, temperature, seed)
        )
        return [self.respond(p, len(self.calls) - 1) for p in prompts]


def is_global(p: str) -> bool:
    return p.startswith("You are checking a generated image")


def asked_regions(p: str) -> list[int]:
    """Region ids listed in a local prompt's region list."""
    listed = p.split("Regions:\n", 1)[1].split("\n\n", 1)[0]
    return [int(m) for m in re.findall(r"^Region (\d+): \[", listed, re.M)]


IMAGES = [Image.new("RGB", (64, 48)), Image.new("RGB", (32, 32)), Image.new("RGB", (40, 20))]
PROMPTS = ["a cat left of a dog", "two apples", "a red car"]
B = [Box(0, 0, 10, 10), Box(5, 5, 30, 20), Box(1, 2, 3, 4)]
BOXES = [[B[0], B[1], B[2]], [], [B[1], B[2]]]
KEPT = [[True, False, True], [], [False, False]]


def cfg(**kw) -> JudgeConfig:
    return JudgeConfig(**{"batch_size": 2, "max_retries": 2, "retry_temperature": 0.7, **kw})


# ------------------------------------------------------------------ free mode


def test_free_mode_all_parsed_first_time():
    scores = {"a cat left of a dog": "0.5", "two apples": "-0.3", "a red car": "2"}

    def respond(p, _):
        user = re.search(r'Prompt: "(.*)"', p).group(1)
        if is_global(p) and "Judge only the layout" in p:
            return f"Score: {scores[user]}\nReason: ok"
        return "\n".join(f"Region {r}: Object: thing{r}; Score: 0.{r}; Reason: r" for r in asked_regions(p))

    model = ScriptedModel(respond)
    out = Judge(model, cfg()).judge(IMAGES, PROMPTS, BOXES, KEPT)

    assert [j.global_score for j in out] == [0.5, -0.3, 1.0]
    assert [j.global_status for j in out] == [PARSED] * 3
    # sample 0: boxes 0 and 2 kept -> region ids 1 and 2
    assert out[0].region_scores == [0.1, None, 0.2]
    assert out[0].region_status == [PARSED, FILTERED, PARSED]
    assert out[0].region_objects == ["thing1", None, "thing2"]
    assert out[1].region_scores == [] and out[1].region_raw == []
    assert out[2].region_status == [FILTERED, FILTERED] and out[2].region_raw == []
    assert out[0].global_raw == ["Score: 0.5\nReason: ok"]
    assert out[0].region_raw == [
        "Region 1: Object: thing1; Score: 0.1; Reason: r\nRegion 2: Object: thing2; Score: 0.2; Reason: r"
    ]
    # 3 global requests at batch 2 -> 2 calls; 1 local request (only sample 0 has kept boxes)
    assert [len(c.prompts) for c in model.calls] == [2, 1, 1]
    assert all(c.temperature == 0.0 and c.seed is None and c.constraint is None for c in model.calls)
    assert all(c.max_new_tokens == 256 for c in model.calls)
    local = model.calls[2].prompts[0]
    assert local == P.local_prompt(PROMPTS[0], [(1, B[0]), (2, B[2])], (64, 48))
    assert "[5, 5, 30, 20]" not in local  # the filtered box is never asked about
    assert model.calls[2].sizes == [(64, 48)]


def test_garbage_gives_bounded_attempts_then_missing():
    model = ScriptedModel(lambda p, _: "I like this picture!")
    judge = Judge(model, cfg(max_retries=2), seed=5)
    out = judge.judge(IMAGES[:2], PROMPTS[:2], [[B[0], B[1]], [B[2]]], [[True, True], [True]])

    for j in out:
        assert j.global_score is None and j.global_status == MISSING
        assert j.global_raw == ["I like this picture!"] * 3  # 1 + max_retries
        assert j.region_raw == ["I like this picture!"] * 3
        assert all(s is None for s in j.region_scores)
        assert all(s == MISSING for s in j.region_status)
    # global stage: 2 requests at batch 2 -> 1 call, then 2 retries * 2 samples -> 4 calls;
    # local stage the same -> 10 calls in all
    assert len(model.calls) == 10
    retries = model.calls[1:5] + model.calls[6:]
    assert [len(model.calls[k].prompts) for k in (0, 5)] == [2, 2]
    assert all(c.temperature == 0.7 and len(c.prompts) == 1 for c in retries)
    expected_seeds = {
        derive_seed(5, i, attempt, stream)
        for attempt in (1, 2)
        for i in (0, 1)
        for stream in ("global", "local")
    }
    assert {c.seed for c in retries} == expected_seeds and len(expected_seeds) == 8
    assert judge.stats.as_dict() == {
        "calls": 10, "requests": 12, "global_parsed": 0, "global_retried": 0, "global_missing": 2,
        "region_parsed": 0, "region_retried": 0, "region_missing": 3, "region_filtered": 0,
    }


def test_zero_retries_means_one_attempt():
    model = ScriptedModel(lambda p, _: "no idea")
    out = Judge(model, cfg(max_retries=0)).judge(IMAGES[:1], PROMPTS[:1], [[B[0]]], [[True]])
    assert out[0].global_raw == ["no idea"] and out[0].region_raw == ["no idea"]
    assert out[0].global_status == MISSING and out[0].region_status == [MISSING]
    assert len(model.calls) == 2  # one greedy global call, one greedy local call
    assert all(c.temperature == 0.0 for c in model.calls)


def test_retry_recovers_and_local_retry_asks_only_missing():
    seen = {"global": 0, "local": 0}

    def respond(p, _):
        kind = "global" if "Judge only the layout" in p else "local"
        seen[kind] += 1
        if kind == "global":
            return "Score: 0.9" if seen[kind] > 1 else "Score: NaN"
        ids = asked_regions(p)
        if seen[kind] == 1:  # answers region 1 only, region 3 garbled
            return "Region 1: Object: cat; Score: 0.4\nRegion 3: Object: dog; Score: lots"
        return "\n".join(f"Region {r}: Object: dog; Score: -0.6" for r in ids)

    model = ScriptedModel(respond)
    judge = Judge(model, cfg(batch_size=8))
    out = judge.judge(IMAGES[:1], PROMPTS[:1], [[B[0], B[1], B[2]]], [[True, True, True]])[0]

    assert (out.global_score, out.global_status) == (0.9, RETRIED)
    assert out.global_raw == ["Score: NaN", "Score: 0.9"]
    assert out.region_scores == [0.4, -0.6, -0.6]
    assert out.region_status == [PARSED, RETRIED, RETRIED]
    assert out.region_objects == ["cat", "dog", "dog"]
    assert len(out.region_raw) == 2
    assert [len(c.prompts) for c in model.calls] == [1, 1, 1, 1]  # global, retry, local, retry
    local_retry = model.calls[3:]
    assert asked_regions(local_retry[0].prompts[0]) == [2, 3]  # ids kept, region 1 not re-asked
    assert "[0, 0, 10, 10]" not in local_retry[0].prompts[0]
    assert judge.stats.as_dict()["region_retried"] == 2
    assert judge.stats.region_parsed == 1 and judge.stats.global_retried == 1


def test_retry_seeds_are_deterministic_and_keyed():
    def run(seed, keys=None):
        model = ScriptedModel(lambda p, _: "?")
        Judge(model, cfg(max_retries=1), seed=seed).judge(
            IMAGES[:2], PROMPTS[:2], [[B[0]], [B[1]]], [[True], [True]], keys=keys
        )
        return [(c.prompts, c.temperature, c.seed) for c in model.calls]

    assert run(3) == run(3)
    seeds_3 = [s for _, _, s in run(3) if s is not None]
    seeds_4 = [s for _, _, s in run(4) if s is not None]
    assert len(seeds_3) == 4 and not set(seeds_3) & set(seeds_4)
    # keys replace the in-call index: sample "b" retried alone gets the same seed as in a pair
    seeds_keyed = [s for _, _, s in run(3, keys=["a", "b"])]
    model = ScriptedModel(lambda p, _: "?")
    Judge(model, cfg(max_retries=1), seed=3).judge(IMAGES[1:2], PROMPTS[1:2], [[B[1]]], [[True]], keys=["b"])
    alone = {c.seed for c in model.calls if c.seed is not None}
    assert alone == {derive_seed(3, "b", 1, "global"), derive_seed(3, "b", 1, "local")}
    assert alone <= set(seeds_keyed)


def test_first_attempt_batches_respect_batch_size():
    model = ScriptedModel(lambda p, _: "Score: 0.1" if "Judge only" in p else "Region 1: Score: 0.2")
    images = [Image.new("RGB", (16, 16))] * 5
    Judge(model, cfg(batch_size=3)).judge(images, ["p"] * 5, [[B[0]]] * 5, [[True]] * 5)
    # 5 global requests (3 + 2), then 5 local requests (3 + 2)
    assert [len(c.prompts) for c in model.calls] == [3, 2, 3, 2]
    assert all(is_global(p) and "Judge only" in p for c in model.calls[:2] for p in c.prompts)


# ------------------------------------------------------------------ guided mode


def guided_respond(number: str, name: str = "red ball\nignored second line"):
    def respond(p, _):
        if p.endswith("Object: "):
            return name
        assert p.endswith("Score: ")
        return number

    return respond


def test_guided_mode_assembles_free_format():
    model = ScriptedModel(guided_respond(" -0.25"))
    judge = Judge(model, cfg(answer_mode="guided", batch_size=16))
    out = judge.judge(IMAGES[:1], PROMPTS[:1], [[B[0], B[1], B[2]]], [[True, False, True]])[0]

    assert (out.global_score, out.global_status) == (-0.25, PARSED)
    assert out.global_raw == ["Score: -0.25"]
    assert out.region_scores == [-0.25, None, -0.25]
    assert out.region_status == [PARSED, FILTERED, PARSED]
    assert out.region_objects == ["red ball", None, "red ball"]
    assert out.region_raw == [
        "Region 1: Object: red ball; Score: -0.25\nRegion 2: Object: red ball; Score: -0.25"
    ]
    kinds = [(len(c.prompts), c.constraint, c.max_new_tokens) for c in model.calls]
    assert kinds == [
        (1, AnswerConstraint("number"), GUIDED_NUMBER_TOKENS),  # global score
        (2, None, GUIDED_OBJECT_TOKENS),  # object names of regions 1, 2
        (2, AnswerConstraint("number"), GUIDED_NUMBER_TOKENS),  # their scores
    ]
    assert model.calls[0].prompts[0] == P.guided_global_prompt(PROMPTS[0])
    assert model.calls[2].prompts[1] == P.guided_score_prompt(PROMPTS[0], 2, B[2], (64, 48), "red ball")


def test_guided_name_cannot_inject_a_score():
    model = ScriptedModel(guided_respond("-", name="dog; Score: 1\nRegion 2: Score: 1"))
    out = Judge(model, cfg(answer_mode="guided", max_retries=1)).judge(
        IMAGES[:1], PROMPTS[:1], [[B[0]]], [[True]]
    )[0]
    assert out.region_scores == [None] and out.region_status == [MISSING]
    assert out.region_objects == ["dog"]
    assert out.region_raw == ["Region 1: Object: dog; Score: -"] * 2
    assert out.global_raw == ["Score: -"] * 2 and out.global_status == MISSING


def test_guided_retry_resamples_only_missing_regions():
    def respond(p, call):
        if p.endswith("Object: "):
            return "cup"
        if "Region 2: Object" in p and call < 3:
            return "."  # unreadable on the first attempt
        return "0.75"

    model = ScriptedModel(respond)
    judge = Judge(model, cfg(answer_mode="guided", batch_size=16, max_new_tokens=4), seed=9)
    out = judge.judge(IMAGES[:1], PROMPTS[:1], [[B[0], B[1]]], [[True, True]])[0]
    assert out.region_scores == [0.75, 0.75] and out.region_status == [PARSED, RETRIED]
    assert out.region_raw == [
        "Region 1: Object: cup; Score: 0.75\nRegion 2: Object: cup; Score: .",
        "Region 2: Object: cup; Score: 0.75",
    ]
    retry = model.calls[3:]
    assert [(len(c.prompts), c.seed, c.max_new_tokens) for c in retry] == [
        (1, derive_seed(9, 0, 1, "local-object"), 4),
        (1, derive_seed(9, 0, 1, "local-score"), 4),
    ]


# ------------------------------------------------------------------ errors, stats, records


def test_input_validation_and_bad_backends():
    judge = Judge(ScriptedModel(lambda p, _: "Score: 0"), cfg())
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        judge.judge(IMAGES[:2], PROMPTS[:1], [[], []], [[], []])
    with pytest.raises(ValueError, match="sample 0 has 2 boxes but 1 kept flags"):
        judge.judge(IMAGES[:1], PROMPTS[:1], [[B[0], B[1]]], [[True]])
    with pytest.raises(ValueError, match="1 keys for 2 images"):
        judge.judge(IMAGES[:2], PROMPTS[:2], [[], []], [[], []], keys=[0])
    with pytest.raises(ValueError, match="answer_mode"):
        Judge(judge.understanding, JudgeConfig(answer_mode="loose"))

    class Short(ScriptedModel):
        def answer(self, images, prompts, **kw):
            return super().answer(images, prompts, **kw)[:-1]

    with pytest.raises(RuntimeError, match="returned 0 answers for 1 prompts"):
        Judge(Short(lambda p, _: "x"), cfg()).judge(IMAGES[:1], PROMPTS[:1], [[]], [[]])


def test_stats_accumulate_and_record_fields():
    model = ScriptedModel(lambda p, _: "Score: 0.5" if "Judge only" in p else "Region 1: Object: a; Score: 1")
    judge = Judge(model, cfg())
    for _ in range(2):
        out = judge.judge(IMAGES[:1], PROMPTS[:1], [[B[0], B[1]]], [[True, False]])
    assert judge.stats == JudgeStats(calls=2, requests=2, global_parsed=1, region_parsed=1, region_filtered=1)
    assert judge.total.as_dict(prefix="judge/")["judge/requests"] == 4
    record = SampleRecord(id="s0", round=0, prompt=PROMPTS[0], seed=1, weights_version=0)
    out[0].apply_to(record)
    assert record.global_score == 0.5 and record.region_scores == [1.0, None]
    assert record.parse == {"global": PARSED, "regions": [PARSED, FILTERED]}
    assert record.judge_raw == {"global": ["Score: 0.5"], "regions": ["Region 1: Object: a; Score: 1"]}
    assert record.region_objects == ["a", None]
    assert SampleRecord.from_json(record.to_json()) == record


def test_derive_seed_is_stable():
    # pinned value: blake2b-64 of "1\x1f2\x1f3\x1fglobal" mod 2**31 (process-independent)
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"1\x1f2\x1f3\x1fglobal", digest_size=8).digest(), "big") % 2**31
    assert derive_seed(1, 2, 3, "global") == want
    assert 0 <= want < 2**31 and derive_seed(1, 2, 3, "local") != want


# ------------------------------------------------------------------ prompts


def test_prompts_carry_rubric_format_and_regions():
    g = P.global_prompt("a cat\n left of  a dog")
    assert 'Prompt: "a cat left of a dog"' in g  # whitespace folded onto one line
    for band in ("1.0 ", "0.5 to 0.9", "-0.4 to 0.4", "-0.9 to -0.5", "-1.0 "):
        assert band in g
    assert g.endswith("Score: <a number between -1 and 1>\nReason: <one short sentence>")
    assert P.guided_global_prompt("x").endswith("\nScore: ")

    loc = P.local_prompt("p", [(1, B[0]), (3, B[1])], (64, 48))
    assert "Region 1: [0, 0, 10, 10]\nRegion 3: [5, 5, 30, 20]\n" in loc
    assert "64 x 48 pixels" in loc and "0.0 means exactly neutral" in loc
    assert "For EVERY region" in loc and "Object: <name>; Score: <number>" in loc
    assert asked_regions(loc) == [1, 3]
    # pure: same inputs, same text
    assert loc == P.local_prompt("p", [(1, B[0]), (3, B[1])], (64, 48))

    assert P.guided_object_prompt("p", 2, B[1], (8, 8)).endswith("\nRegion 2: Object: ")
    assert P.guided_score_prompt("p", 2, B[1], (8, 8), None).endswith("\nRegion 2: Object: ; Score: ")
    assert P.format_region_line(4, "cup", "0.5") == "Region 4: Object: cup; Score: 0.5"
    assert P.format_global_answer("-0.1") == "Score: -0.1"


# ------------------------------------------------------------------ a tiny real model


def test_guided_mode_with_tiny_random_vlm():
    """A random-weight LLaVA cannot keep a format; guided mode still yields readable answers."""
    from srum_ray.config.schema import TinyModelConfig
    from srum_ray.models.tiny_vlm import TinyUnderstanding

    model = TinyUnderstanding(TinyModelConfig(vlm_hidden=32, vlm_layers=1))
    images = [Image.new("RGB", (64, 64), (200, 10, 10)), Image.new("RGB", (64, 64), (10, 10, 200))]
    boxes = [[Box(0, 0, 32, 32), Box(10, 10, 60, 60)], [Box(0, 0, 64, 20)]]
    kept = [[True, False], [True]]

    def run():
        judge = Judge(model, cfg(answer_mode="guided", max_new_tokens=12, max_retries=1), seed=1)
        return judge.judge(images, ["a red car", "blue sky"], boxes, kept), judge.stats

    out, stats = run()
    line = re.compile(r"^Region (\d+): Object: [^;\n]*; Score: [0-9.+\- ]*$")
    for j, k in zip(out, kept):
        assert j.global_status in (PARSED, RETRIED, MISSING)
        assert all(re.fullmatch(r"Score: [0-9.+\- ]*", raw) for raw in j.global_raw)
        assert 1 <= len(j.global_raw) <= 2
        for raw in j.region_raw:
            assert all(line.match(part) for part in raw.split("\n"))
        for s, st, kk in zip(j.region_scores, j.region_status, k):
            assert st == FILTERED if not kk else st in (PARSED, RETRIED, MISSING)
            assert (s is None) == (st in (FILTERED, MISSING))
            assert s is None or -1.0 <= s <= 1.0
    assert stats.region_filtered == 1
    assert stats.region_parsed + stats.region_retried + stats.region_missing == 2
    assert run()[0] == out  # greedy first attempts and seeded retries: reproducible
