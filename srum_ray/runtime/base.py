"""What the round loop needs from a runtime: where the roles run.

:class:`~srum_ray.runtime.local.LocalRuntime` runs every role in this process;
:class:`~srum_ray.runtime.ray_runtime.RayRuntime` runs them as Ray actors and Serve
deployments. The round loop (:mod:`srum_ray.loop`) owns everything else (rewards, the run
directory, metrics, commit and resume), so both runtimes share it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, Sequence

from srum_ray.data import SampleSpec
from srum_ray.types import RolloutBatch

#: called with each judged chunk as soon as it is ready, and the seconds its stages took
OnBatch = Callable[[RolloutBatch, dict[str, float]], None]


class Runtime(abc.ABC):
    """Roles of a round, wherever they run."""

    @abc.abstractmethod
    def collect(self, specs: Sequence[SampleSpec], round_index: int, on_batch: OnBatch) -> None:
        """Generate, propose, filter and judge every spec.

        ``on_batch`` is called in the caller's thread once per judged chunk, in completion
        order; every spec arrives in exactly one chunk.
        """

    @abc.abstractmethod
    def train(
        self, batch: RolloutBatch, step_indices: list[list[int]], lambda_c: float
    ) -> list[dict[str, Any]]:
        """One optimizer step per entry of ``step_indices`` (rows of ``batch``); metrics per step."""

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Checkpoint the learner (model, optimizer, scheduler) into ``directory``."""

    @abc.abstractmethod
    def load(self, directory: Path) -> None:
        """Restore the learner from ``directory``."""

    @abc.abstractmethod
    def sync(self, version: int) -> dict[str, float]:
        """Push the learner's weights to every generator as ``version``; returns timings/bytes."""

    @abc.abstractmethod
    def global_step(self) -> int:
        """Optimizer steps taken so far."""

    def generator_versions(self) -> list[int]:
        """Weights version each generator holds (for checks)."""
        return []

    def replicas(self) -> dict[str, int]:
        """Workers per role right now."""
        return {}

    def timeline(self, path: Path, since: float | None = None) -> bool:
        """Write a trace of the tasks since ``since`` (epoch s) to ``path`` if this runtime
        can; returns whether it did."""
        return False

    def shutdown(self) -> None:
        """Release workers."""
