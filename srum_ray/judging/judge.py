"""The judge: the understanding module scores its own images globally and per region.

SPEC section 2.3. For each sample the judge asks one global question (layout vs. the
prompt's spatial intent) and one local question about the kept boxes (object name, then a
relevance-and-quality score per region), reads the answers with :mod:`.parser`, and retries
what could not be read a bounded number of times. It never decides what a missing score
becomes: that is the reward stage's job (``JudgeConfig.on_missing_*``); here a missing score
is ``None`` with status :data:`~srum_ray.types.MISSING`.

Two answer modes (``JudgeConfig.answer_mode``):

* ``"free"``: the model writes the whole answer: one global and one local request per
  sample (the local one lists all kept regions).
* ``"guided"``: the judge writes the answer skeleton. Global: the prompt ends with
  ``Score: `` and the model fills a number under ``AnswerConstraint("number")``. Local, per
  kept region: the model names the object (free text, first line), then fills the score
  under the number constraint. The judge assembles the filled-in pieces into the free format
  and reads them with the same parser, so the raw text is kept the same way in both modes.

First attempts are greedy and batched: all samples' global requests, then all local ones
(guided: object names, then scores), ``cfg.batch_size`` requests per
:meth:`UnderstandingModel.answer` call. Retries (attempts ``1..cfg.max_retries``) sample at
``cfg.retry_temperature`` with a seed from :func:`derive_seed` ``(judge seed, sample key,
attempt, stream)``: one call per sample (the interface takes one seed per call), so a
retry's answer does not depend on which other samples failed. A local retry asks only about
the regions still missing. Region ids in the prompts are ``1..K`` over the sample's kept
boxes, in box order, and stay fixed across retries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from PIL import Image

from srum_ray.config.schema import JudgeConfig
from srum_ray.judging import prompts as P
from srum_ray.judging.counters import Counters
from srum_ray.judging.parser import clean_number_text, clean_object_name, parse_global, parse_local
from srum_ray.models.base import AnswerConstraint, UnderstandingModel
from srum_ray.types import FILTERED, MISSING, PARSED, RETRIED, Box, SampleRecord

NUMBER = AnswerConstraint("number")
#: token budgets of the guided-mode pieces (capped by ``cfg.max_new_tokens``)
GUIDED_OBJECT_TOKENS = 16
GUIDED_NUMBER_TOKENS = 8


def derive_seed(*parts: Hashable) -> int:
    """A seed in ``[0, 2**31)`` that is a stable function of ``parts`` (process-independent)."""
    data = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % (2**31)


@dataclass
class JudgeStats(Counters):
    """Counts of one :meth:`Judge.judge` call (or a sum of calls, see :meth:`add`).

    ``calls`` counts :meth:`UnderstandingModel.answer` invocations and ``requests`` the
    prompts sent through them. ``*_parsed`` were read at the first attempt, ``*_retried``
    on a retry, ``*_missing`` never; ``region_filtered`` boxes were not asked about.
    """

    calls: int = 0
    requests: int = 0
    global_parsed: int = 0
    global_retried: int = 0
    global_missing: int = 0
    region_parsed: int = 0
    region_retried: int = 0
    region_missing: int = 0
    region_filtered: int = 0


@dataclass
class Judgement:
    """The judge's verdict on one sample.

    Attributes:
        global_score: global score in [-1, 1], or None when missing.
        global_status: ``PARSED``, ``RETRIED`` or ``MISSING``.
        global_raw: every global answer, attempts in order (guided mode: the assembled text).
        region_scores: one per box: score in [-1, 1], or None (filtered or missing).
        region_status: one per box: ``FILTERED`` (kept=False), ``PARSED``, ``RETRIED`` or
            ``MISSING``.
        region_objects: one per box: the object named for it, or None.
        region_raw: every local answer of this sample, attempts in order.
    """

    global_score: float | None = None
    global_status: str = MISSING
    global_raw: list[str] = field(default_factory=list)
    region_scores: list[float | None] = field(default_factory=list)
    region_status: list[str] = field(default_factory=list)
    region_objects: list[str | None] = field(default_factory=list)
    region_raw: list[str] = field(default_factory=list)

    def record_fields(self) -> dict[str, Any]:
        """The :class:`~srum_ray.types.SampleRecord` fields this judgement fills."""
        return {
            "global_score": self.global_score,
            "region_scores": list(self.region_scores),
            "region_objects": list(self.region_objects),
            "judge_raw": {"global": list(self.global_raw), "regions": list(self.region_raw)},
            "parse": {"global": self.global_status, "regions": list(self.region_status)},
        }

    def apply_to(self, record: SampleRecord) -> None:
        """Write :meth:`record_fields` into ``record``."""
        for name, value in self.record_fields().items():
            setattr(record, name, value)


class Judge:
    """Scores images with an understanding model (see the module docstring).

    Args:
        understanding: the model that answers (the one being trained, or a frozen copy).
        cfg: judge settings.
        seed: base of the retry seeds.

    Attributes:
        stats: counts of the latest :meth:`judge` call.
        total: counts summed over all calls of this instance.
    """

    def __init__(self, understanding: UnderstandingModel, cfg: JudgeConfig, seed: int = 0):
        if cfg.answer_mode not in ("free", "guided"):
            raise ValueError(
                f"judge.answer_mode must be 'free' or 'guided', got {cfg.answer_mode!r}"
            )
        if cfg.batch_size < 1 or cfg.max_retries < 0 or cfg.max_new_tokens < 1:
            raise ValueError(
                "judge config needs batch_size >= 1, max_retries >= 0, max_new_tokens >= 1; got "
                f"{cfg.batch_size}, {cfg.max_retries}, {cfg.max_new_tokens}"
            )
        self.understanding = understanding
        self.cfg = cfg
        self.seed = int(seed)
        self.stats = JudgeStats()
        self.total = JudgeStats()

    # ----------------------------------------------------------------- public entry
    def judge(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        boxes: Sequence[Sequence[Box]],
        kept: Sequence[Sequence[bool]],
        keys: Sequence[Hashable] | None = None,
    ) -> list[Judgement]:
        """Judge every sample.

        Args:
            images: one RGB image per sample.
            prompts: the text prompt each image was generated from.
            boxes: per sample, its region boxes in pixels.
            kept: per sample, one flag per box; only kept boxes are asked about.
            keys: per sample, a stable id used in retry seeds (default: the index in this
                call). Pass a global id (e.g. the sample's seed) so retries do not depend on
                how samples were split across calls or workers.

        Returns:
            One :class:`Judgement` per sample, in order.
        """
        n = len(images)
        if not (len(prompts) == len(boxes) == len(kept) == n):
            raise ValueError(
                f"Judge.judge needs one prompt, box list and kept list per image; got {n} "
                f"images, {len(prompts)} prompts, {len(boxes)} box lists, {len(kept)} kept lists"
            )
        for i in range(n):
            if len(kept[i]) != len(boxes[i]):
                raise ValueError(
                    f"Judge.judge: sample {i} has {len(boxes[i])} boxes but "
                    f"{len(kept[i])} kept flags"
                )
        keys = list(range(n)) if keys is None else list(keys)
        if len(keys) != n:
            raise ValueError(f"Judge.judge: got {len(keys)} keys for {n} images")

        stats = JudgeStats()
        out = [
            Judgement(
                region_scores=[None] * len(kept[i]),
                region_status=[MISSING if k else FILTERED for k in kept[i]],
                region_objects=[None] * len(kept[i]),
            )
            for i in range(n)
        ]
        # region id r (1-based) of sample i is box index region_box[i][r - 1]
        region_box = [[j for j, k in enumerate(kept[i]) if k] for i in range(n)]
        ctx = _Ctx(images, [str(p) for p in prompts], boxes, keys, region_box, stats)
        self._judge_global(ctx, out)
        self._judge_local(ctx, out)

        for j in out:
            stats.global_parsed += j.global_status == PARSED
            stats.global_retried += j.global_status == RETRIED
            stats.global_missing += j.global_status == MISSING
            stats.region_parsed += j.region_status.count(PARSED)
            stats.region_retried += j.region_status.count(RETRIED)
            stats.region_missing += j.region_status.count(MISSING)
            stats.region_filtered += j.region_status.count(FILTERED)
        self.stats = stats
        self.total.add(stats)
        return out

    # ----------------------------------------------------------------- global
    def _judge_global(self, ctx: "_Ctx", out: list[Judgement]) -> None:
        pending = list(range(len(out)))
        for attempt in range(1 + self.cfg.max_retries):
            if not pending:
                break
            raws = self._global_answers(ctx, pending, attempt)
            for i in pending:
                out[i].global_raw.append(raws[i])
                parsed = parse_global(raws[i])
                if parsed.score is not None:
                    out[i].global_score = parsed.score
                    out[i].global_status = PARSED if attempt == 0 else RETRIED
            pending = [i for i in pending if out[i].global_score is None]

    def _global_answers(self, ctx: "_Ctx", pending: list[int], attempt: int) -> dict[int, str]:
        if self.cfg.answer_mode == "free":
            groups = {i: [P.global_prompt(ctx.prompts[i])] for i in pending}
            answers = self._ask_groups(
                ctx, groups, attempt, "global", self.cfg.max_new_tokens, None
            )
            return {i: a[0] for i, a in answers.items()}
        groups = {i: [P.guided_global_prompt(ctx.prompts[i])] for i in pending}
        answers = self._ask_groups(ctx, groups, attempt, "global", self._number_tokens, NUMBER)
        return {i: P.format_global_answer(clean_number_text(a[0])) for i, a in answers.items()}

    # ----------------------------------------------------------------- local
    def _judge_local(self, ctx: "_Ctx", out: list[Judgement]) -> None:
        pending = {i: list(range(1, len(rb) + 1)) for i, rb in enumerate(ctx.region_box) if rb}
        for attempt in range(1 + self.cfg.max_retries):
            if not pending:
                break
            raws = self._local_answers(ctx, pending, attempt)
            for i, rids in pending.items():
                out[i].region_raw.append(raws[i])
                parsed = parse_local(raws[i], rids)
                for rid in rids:
                    j, region = ctx.region_box[i][rid - 1], parsed[rid]
                    if region.score is not None:
                        out[i].region_scores[j] = region.score
                        out[i].region_status[j] = PARSED if attempt == 0 else RETRIED
                        out[i].region_objects[j] = region.object
                    elif out[i].region_objects[j] is None:
                        out[i].region_objects[j] = region.object  # first name given, if any
            pending = {
                i: [r for r in rids if out[i].region_scores[ctx.region_box[i][r - 1]] is None]
                for i, rids in pending.items()
            }
            pending = {i: rids for i, rids in pending.items() if rids}

    def _local_answers(
        self, ctx: "_Ctx", pending: dict[int, list[int]], attempt: int
    ) -> dict[int, str]:
        if self.cfg.answer_mode == "free":
            groups = {
                i: [P.local_prompt(ctx.prompts[i], ctx.regions(i, rids), ctx.size(i))]
                for i, rids in pending.items()
            }
            answers = self._ask_groups(ctx, groups, attempt, "local", self.cfg.max_new_tokens, None)
            return {i: a[0] for i, a in answers.items()}

        obj_groups = {
            i: [
                P.guided_object_prompt(ctx.prompts[i], rid, box, ctx.size(i))
                for rid, box in ctx.regions(i, rids)
            ]
            for i, rids in pending.items()
        }
        obj_tokens = min(self.cfg.max_new_tokens, GUIDED_OBJECT_TOKENS)
        named = self._ask_groups(ctx, obj_groups, attempt, "local-object", obj_tokens, None)
        names = {i: [clean_object_name(a) for a in answers] for i, answers in named.items()}
        score_groups = {
            i: [
                P.guided_score_prompt(ctx.prompts[i], rid, box, ctx.size(i), name)
                for (rid, box), name in zip(ctx.regions(i, rids), names[i])
            ]
            for i, rids in pending.items()
        }
        scored = self._ask_groups(
            ctx, score_groups, attempt, "local-score", self._number_tokens, NUMBER
        )
        return {
            i: "\n".join(
                P.format_region_line(rid, name, clean_number_text(num))
                for rid, name, num in zip(rids, names[i], scored[i])
            )
            for i, rids in pending.items()
        }

    # ----------------------------------------------------------------- calls
    @property
    def _number_tokens(self) -> int:
        return min(self.cfg.max_new_tokens, GUIDED_NUMBER_TOKENS)

    def _ask_groups(
        self,
        ctx: "_Ctx",
        groups: dict[int, list[str]],
        attempt: int,
        stream: str,
        max_new_tokens: int,
        constraint: AnswerConstraint | None,
    ) -> dict[int, list[str]]:
        """Answers to ``groups`` (sample index -> prompts about that sample's image).

        Attempt 0 pools all groups into greedy batches; a retry asks each sample's group in
        its own calls, sampled with the seed of ``(seed, key, attempt, stream)``.
        """
        if attempt == 0:
            flat = [(i, text) for i, texts in groups.items() for text in texts]
            answers = self._ask(ctx, flat, max_new_tokens, constraint, 0.0, None)
            result: dict[int, list[str]] = {i: [] for i in groups}
            for (i, _), answer in zip(flat, answers):
                result[i].append(answer)
            return result
        result = {}
        for i, texts in groups.items():
            seed = derive_seed(self.seed, ctx.keys[i], attempt, stream)
            flat = [(i, text) for text in texts]
            result[i] = self._ask(
                ctx, flat, max_new_tokens, constraint, self.cfg.retry_temperature, seed
            )
        return result

    def _ask(
        self,
        ctx: "_Ctx",
        flat: list[tuple[int, str]],
        max_new_tokens: int,
        constraint: AnswerConstraint | None,
        temperature: float,
        seed: int | None,
    ) -> list[str]:
        """``(sample index, prompt)`` requests in chunks of ``cfg.batch_size``; chunk k > 0 of a
        seeded request list gets the seed ``derive_seed(seed, "chunk", k)``."""
        answers: list[str] = []
        size = self.cfg.batch_size
        for k, start in enumerate(range(0, len(flat), size)):
            chunk = flat[start : start + size]
            chunk_seed = seed if (seed is None or k == 0) else derive_seed(seed, "chunk", k)
            got = self.understanding.answer(
                [ctx.images[i] for i, _ in chunk],
                [text for _, text in chunk],
                max_new_tokens=max_new_tokens,
                constraint=constraint,
                temperature=temperature,
                seed=chunk_seed,
            )
            ctx.stats.calls += 1
            ctx.stats.requests += len(chunk)
            if len(got) != len(chunk):
                raise RuntimeError(
                    f"{type(self.understanding).__name__}.answer returned {len(got)} answers "
                    f"for {len(chunk)} prompts"
                )
            for answer in got:
                if not isinstance(answer, str):
                    raise TypeError(
                        f"{type(self.understanding).__name__}.answer returned a "
                        f"{type(answer).__name__}, expected str"
                    )
            answers.extend(got)
        return answers


@dataclass
class _Ctx:
    """Inputs of one :meth:`Judge.judge` call, shared by its helpers."""

    images: Sequence[Image.Image]
    prompts: list[str]
    boxes: Sequence[Sequence[Box]]
    keys: list[Hashable]
    region_box: list[list[int]]
    stats: JudgeStats

    def size(self, i: int) -> tuple[int, int]:
        return tuple(self.images[i].size)  # (width, height)

    def regions(self, i: int, rids: Sequence[int]) -> list[tuple[int, Box]]:
        return [(rid, self.boxes[i][self.region_box[i][rid - 1]]) for rid in rids]
