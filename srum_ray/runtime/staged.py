"""The staged baseline: what the public SRUM code does, in one process.

Generate every image of the round, then propose boxes for all of them, then filter and
judge all of them, and only then reward and train (the public code joins the three stages by
files). Used by ``bench/pipeline.py`` as the baseline the streaming runtimes are compared to.
"""

from __future__ import annotations

import time
from typing import Sequence

from srum_ray.data import SampleSpec
from srum_ray.runtime.base import OnBatch
from srum_ray.runtime.local import LocalRuntime
from srum_ray.stages import filter_stage, generate_stage, judge_stage, propose_stage
from srum_ray.types import RolloutBatch


class StagedRuntime(LocalRuntime):
    """:class:`LocalRuntime` with a barrier after every stage."""

    def collect(self, specs: Sequence[SampleSpec], round_index: int, on_batch: OnBatch) -> None:
        roles, size = self.roles, self.cfg.generation.batch_size
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        batch = RolloutBatch.concat(
            generate_stage(roles.generator, specs[i : i + size], round_index)
            for i in range(0, len(specs), size)
        )
        seconds["generate"] = time.perf_counter() - t
        for name, fn in (
            ("propose", lambda b: propose_stage(roles.grounder, b)),
            ("filter", lambda b: filter_stage(roles.box_filter, b)),
            ("judge", lambda b: judge_stage(roles.judge, b)),
        ):
            t = time.perf_counter()
            batch = fn(batch)
            seconds[name] = time.perf_counter() - t
        on_batch(batch, seconds)
