"""Box relevance filter: the understanding module drops boxes the prompt is not about.

SPEC section 2.2 (the paper filters, the public code does not). For each box the model is
asked, with the box coordinates and the prompt, whether the region shows something the
prompt is about; the answer is constrained to ``yes``/``no`` and read with
:func:`~srum_ray.judging.parser.parse_choice`. An answer that still cannot be read follows
``FilterConfig.on_unparsed`` and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from srum_ray.config.schema import FilterConfig
from srum_ray.judging.counters import Counters
from srum_ray.judging.parser import parse_choice
from srum_ray.judging.prompts import filter_prompt
from srum_ray.models.base import AnswerConstraint, UnderstandingModel
from srum_ray.types import Box

YES_NO = AnswerConstraint("choice", ("yes", "no"))


@dataclass
class FilterStats(Counters):
    """Counts of one :meth:`BoxFilter.filter` call (or a sum, see :meth:`add`).

    ``unparsed`` answers are also counted in ``kept`` or ``dropped`` per ``on_unparsed``.
    """

    calls: int = 0
    requests: int = 0
    kept: int = 0
    dropped: int = 0
    unparsed: int = 0


class BoxFilter:
    """Asks, per box, whether it shows something the prompt is about.

    Args:
        understanding: the model that answers.
        cfg: filter settings.
        batch_size: boxes per :meth:`UnderstandingModel.answer` call (``FilterConfig`` has no
            batch size; the round loop passes the judge's).

    Attributes:
        stats: counts of the latest :meth:`filter` call.
        total: counts summed over all calls of this instance.
    """

    def __init__(self, understanding: UnderstandingModel, cfg: FilterConfig, batch_size: int = 16):
        if cfg.on_unparsed not in ("keep", "drop"):
            raise ValueError(
                f"filter.on_unparsed must be 'keep' or 'drop', got {cfg.on_unparsed!r}"
            )
        if batch_size < 1:
            raise ValueError(f"BoxFilter batch_size must be >= 1, got {batch_size}")
        self.understanding = understanding
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.stats = FilterStats()
        self.total = FilterStats()

    def filter(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        boxes: Sequence[Sequence[Box]],
    ) -> tuple[list[list[bool]], list[list[str]]]:
        """Kept flags and raw answers, one per box.

        Args:
            images: one RGB image per sample.
            prompts: the text prompt each image was generated from.
            boxes: per sample, its boxes in pixels.

        Returns:
            ``(kept, raw)``: ``kept[i][j]`` says whether box ``j`` of sample ``i`` stays;
            ``raw[i][j]`` is the model's answer for it (``""`` when the filter is disabled).
        """
        if not (len(images) == len(prompts) == len(boxes)):
            raise ValueError(
                f"BoxFilter.filter needs one prompt and box list per image; got {len(images)} "
                f"images, {len(prompts)} prompts, {len(boxes)} box lists"
            )
        stats = FilterStats()
        if not self.cfg.enabled:
            kept = [[True] * len(b) for b in boxes]
            raw = [[""] * len(b) for b in boxes]
            stats.kept = sum(len(b) for b in boxes)
            self.stats = stats
            self.total.add(stats)
            return kept, raw

        requests = [(i, j) for i in range(len(boxes)) for j in range(len(boxes[i]))]
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            texts = [
                filter_prompt(str(prompts[i]), boxes[i][j], tuple(images[i].size)) for i, j in chunk
            ]
            got = self.understanding.answer(
                [images[i] for i, _ in chunk],
                texts,
                max_new_tokens=self.cfg.max_new_tokens,
                constraint=YES_NO,
                temperature=0.0,
                seed=None,
            )
            if len(got) != len(chunk):
                raise RuntimeError(
                    f"{type(self.understanding).__name__}.answer returned {len(got)} answers "
                    f"for {len(chunk)} prompts"
                )
            stats.calls += 1
            stats.requests += len(chunk)
            answers.extend(a if isinstance(a, str) else str(a) for a in got)

        kept = [[True] * len(b) for b in boxes]
        raw = [[""] * len(b) for b in boxes]
        for (i, j), answer in zip(requests, answers):
            raw[i][j] = answer
            choice = parse_choice(answer, ("yes", "no"))
            if choice is None:
                stats.unparsed += 1
                keep = self.cfg.on_unparsed == "keep"
            else:
                keep = choice == "yes"
            kept[i][j] = keep
            stats.kept += keep
            stats.dropped += not keep
        self.stats = stats
        self.total.add(stats)
        return kept, raw
