"""Every role in this process: the single-process runtime.

The learner trains the generator's own trainable module; a sync is a version bump plus a
load of the learner's state into the generator (the same object, so it copies in place).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from srum_ray.config.schema import SrumConfig
from srum_ray.data import SampleSpec
from srum_ray.grounding import build_grounder
from srum_ray.grounding.base import Grounder
from srum_ray.judging.filter import BoxFilter
from srum_ray.judging.judge import Judge
from srum_ray.learner import build_engine
from srum_ray.learner.engine import Engine
from srum_ray.models.base import GenerationModel
from srum_ray.models.registry import build_model, resolve_device  # noqa: F401 - re-exported
from srum_ray.runtime.base import OnBatch, Runtime
from srum_ray.stages import filter_stage, generate_stage, judge_stage, propose_stage
from srum_ray.types import RolloutBatch

log = logging.getLogger("srum_ray")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A checkpoint or model could not be built (one line naming the path and problem)."""


@dataclass
class Roles:
    """Every role of a round, built in this process."""

    generator: GenerationModel
    grounder: Grounder
    box_filter: BoxFilter
    judge: Judge
    engine: Engine


def apply_cpu_threads(cfg: SrumConfig) -> None:
    """Set torch's intra-op thread count to ``run.cpu_threads`` (0: leave torch's default)."""
    if cfg.run.cpu_threads:
        torch.set_num_threads(cfg.run.cpu_threads)


def build_roles(cfg: SrumConfig, device: str) -> Roles:
    """Build the model, grounder, filter, judge and learner engine from config."""
    apply_cpu_threads(cfg)
    t0 = time.perf_counter()
    try:
        model = build_model(cfg.model, cfg.generation, device=device, dtype=DTYPES[cfg.run.dtype])
        grounder = build_grounder(cfg.grounder, understanding=model.understanding, device=device)
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:
        raise ModelLoadError(f"{type(e).__name__}: {e}".splitlines()[0]) from e
    log.info("built models on %s in %.1f s", device, time.perf_counter() - t0)
    return Roles(
        generator=model.generator,
        grounder=grounder,
        box_filter=BoxFilter(model.understanding, cfg.filter, batch_size=cfg.judge.batch_size),
        judge=Judge(model.understanding, cfg.judge, seed=cfg.run.seed),
        engine=build_engine(model.generator, cfg.train, seed=cfg.run.seed, dtype=cfg.run.dtype),
    )


class LocalRuntime(Runtime):
    """Runs each chunk of ``generation.batch_size`` specs through every stage in turn."""

    def __init__(self, cfg: SrumConfig, roles: Roles) -> None:
        self.cfg = cfg
        self.roles = roles

    def collect(self, specs: Sequence[SampleSpec], round_index: int, on_batch: OnBatch) -> None:
        roles = self.roles
        size = self.cfg.generation.batch_size
        for start in range(0, len(specs), size):
            chunk = list(specs[start : start + size])
            steps = [
                ("generate", lambda b: generate_stage(roles.generator, chunk, round_index)),
                ("propose", lambda b: propose_stage(roles.grounder, b)),
                ("filter", lambda b: filter_stage(roles.box_filter, b)),
                ("judge", lambda b: judge_stage(roles.judge, b)),
            ]
            batch, seconds = None, {}
            for name, fn in steps:
                t = time.perf_counter()
                batch = fn(batch)
                seconds[name] = time.perf_counter() - t
            on_batch(batch, seconds)

    def train(
        self, batch: RolloutBatch, step_indices: list[list[int]], lambda_c: float
    ) -> list[dict[str, Any]]:
        return [self.roles.engine.train_batch(batch.select(idx), lambda_c) for idx in step_indices]

    def save(self, directory: Path) -> None:
        self.roles.engine.save(directory)

    def load(self, directory: Path) -> None:
        self.roles.engine.load(directory)

    def sync(self, version: int) -> dict[str, float]:
        t = time.perf_counter()
        self.roles.generator.load_trainable_state(self.roles.engine.state_dict_for_sync(), version)
        return {"sync_s": time.perf_counter() - t}

    def global_step(self) -> int:
        return self.roles.engine.global_step

    def generator_versions(self) -> list[int]:
        return [self.roles.generator.weights_version]

    def replicas(self) -> dict[str, int]:
        return {"generator": 1, "grounder": 1, "judge": 1, "learner": 1}
