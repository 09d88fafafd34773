"""Rollout generator workers: the generation model with its current weights version.

:class:`GeneratorWorker` is a plain class (a test builds it in-process); the runtime wraps it
with ``ray.remote(GeneratorWorker).options(**role_options(cfg.runtime.generator))``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from srum_ray.config.load import config_from_dict
from srum_ray.config.schema import RoleConfig
from srum_ray.data import SampleSpec
from srum_ray.runtime.local import DTYPES, resolve_device
from srum_ray.runtime.sync import SyncGroup, state_checksum
from srum_ray.stages import generate_stage
from srum_ray.types import RolloutBatch


def role_options(role: RoleConfig, **extra: Any) -> dict[str, Any]:
    """``ray.remote(...).options`` for a fixed-size role, from its config."""
    opts: dict[str, Any] = {"num_cpus": role.num_cpus, "num_gpus": role.num_gpus}
    if role.resources:
        opts["resources"] = dict(role.resources)
    opts.update(extra)
    return opts


def worker_device(cfg_device: str) -> str:
    """``cuda`` when this worker was given a GPU (or the config asks for it), else ``cpu``."""
    if cfg_device == "cpu":
        return "cpu"
    return resolve_device("cuda" if torch.cuda.is_available() else "cpu")


class GeneratorWorker:
    """One rollout generator.

    Args:
        cfg: the resolved config as a mapping (what crosses to a Ray actor).
        index: this generator's index in its group.
    """

    def __init__(self, cfg: dict, index: int = 0) -> None:
        from srum_ray.models.registry import build_model

        self.cfg = config_from_dict(cfg)
        self.index = index
        if self.cfg.run.cpu_threads:
            torch.set_num_threads(self.cfg.run.cpu_threads)
        self.device = worker_device(self.cfg.run.device)
        model = build_model(
            self.cfg.model, self.cfg.generation, device=self.device, dtype=DTYPES[self.cfg.run.dtype],
            parts=("generator",),
        )
        self.generator = model.generator
        self.sync_group: SyncGroup | None = None

    def generate(self, specs: Sequence[SampleSpec], round_index: int) -> RolloutBatch:
        """Draw ``specs`` with the current weights (each record carries their version)."""
        return generate_stage(self.generator, specs, round_index)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Object-store sync: load pushed weights; returns the version now held."""
        self.generator.load_trainable_state(state, version)
        return self.generator.weights_version

    def weights_version(self) -> int:
        return self.generator.weights_version

    def weights_checksum(self) -> str:
        """sha256 of the trainable weights (compare with the learner's after a sync)."""
        return state_checksum(self.generator.trainable_module().state_dict())

    def sync_join(self, host: str, port: int, rank: int, world_size: int, backend: str) -> bool:
        """Join the collective weight-sync group (blocks until every member joined)."""
        self.sync_group = SyncGroup(host, port, rank, world_size, backend)
        return True

    def sync_receive(self, version: int) -> int:
        """Collective sync: receive a broadcast into the trainable module; returns bytes."""
        if self.sync_group is None:
            raise RuntimeError("sync_receive before sync_join")
        n = self.sync_group.receive(self.generator.trainable_module().state_dict())
        self.generator.weights_version = int(version)
        return n

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()
