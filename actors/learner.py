"""The learner role: N ranks of one engine, as Ray actors or in the driver process.

:class:`LearnerWorker` is a plain class (one rank: its generator copy and engine).
:class:`LearnerGroup` starts ``runtime.learner.replicas`` of them as Ray actors on the
resources the config names, or one in the driver when the count is 0, and speaks for the
group: the controller calls the group, never a rank.

Rendezvous: rank 0 is started first and reports its node IP and a free port; the other ranks
are started with that address; then every rank runs :meth:`LearnerWorker.setup` at once
(building the model and joining the process group blocks until all ranks have joined).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from srum_ray import distributed
from srum_ray.config.schema import SrumConfig
from srum_ray.learner import build_engine
from srum_ray.learner.ds_config import micro_batch_size
from srum_ray.runtime.sync import state_checksum
from srum_ray.types import RolloutBatch

log = logging.getLogger(__name__)

__all__ = ["LearnerGroup", "LearnerWorker", "rank_rows"]


def rank_rows(rows: Sequence[int], rank: int, world_size: int, grad_accum_steps: int = 1) -> list[int]:
    """This rank's contiguous share of one optimizer step's global rows.

    The rows are first repeated cyclically up to a multiple of ``world_size *
    grad_accum_steps`` (a step with fewer trainable samples than ``train.batch_size`` still
    gives every rank and micro-step the same number of rows), then cut into ``world_size``
    equal consecutive shares.

    Example: rows ``[7, 8, 9]``, world size 2 -> padded ``[7, 8, 9, 7]``; rank 0 ``[7, 8]``,
    rank 1 ``[9, 7]``.

    Raises:
        ValueError: no rows, or a rank outside the world.
    """
    if not rows:
        raise ValueError("an optimizer step needs at least one row")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    unit = world_size * grad_accum_steps
    padded = [rows[i % len(rows)] for i in range(-(-len(rows) // unit) * unit)]
    share = len(padded) // world_size
    return padded[rank * share : (rank + 1) * share]


def _get_all(refs: list[Any]) -> list[Any]:
    """``ray.get`` of every ref, raising as soon as any one fails.

    A plain ``ray.get(list)`` would wait on ranks that are blocked in a collective with a
    rank that already died; this surfaces the first error instead.
    """
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(list(refs))


class LearnerWorker:
    """One learner rank: a generator copy and its engine (torch or DeepSpeed).

    Construction is cheap (no model, no process group); :meth:`setup` builds both.

    Args:
        cfg: the full config (model, generation, train, run.dtype/device/seed, runtime.learner).
        rank: this rank, ``0 <= rank < world_size``.
        world_size: number of ranks.
        master_addr: rank 0's address; ``None`` on rank 0 means this node's IP.
        master_port: rank 0's rendezvous port; ``None`` on rank 0 picks a free one.
        remote: running as a Ray actor (the rank may only use the GPUs Ray assigned).
    """

    def __init__(
        self,
        cfg: SrumConfig,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str | None = None,
        master_port: int | None = None,
        *,
        remote: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        if rank > 0 and (master_addr is None or master_port is None):
            raise ValueError(f"rank {rank} needs rank 0's master_addr and master_port")
        if world_size > 1 and cfg.train.engine != "deepspeed":
            raise ValueError(
                f"train.engine 'torch' runs one process, but runtime.learner.replicas is "
                f"{world_size}: set train.engine=deepspeed for more than one learner rank"
            )
        micro_batch_size(cfg.train.batch_size, world_size, cfg.train.grad_accum_steps)
        self.cfg, self.rank, self.world_size, self.remote = cfg, rank, world_size, remote
        if master_addr is None:
            master_addr = distributed.node_ip() if remote else "127.0.0.1"
        self.master_addr = master_addr
        self.master_port = int(master_port) if master_port is not None else distributed.free_port()
        self.engine = None
        self.generator = None
        self.device = "cpu"
        self._sync = None  # weight-sync broadcast group (rank 0 only)
        self._last_nbytes = 0

    def master_address(self) -> tuple[str, int]:
        """``(address, port)`` the other ranks join (meaningful on rank 0)."""
        return self.master_addr, self.master_port

    def setup(self) -> None:
        """Build the generator and the engine; with DeepSpeed, join the process group.

        Blocks until every rank has called it (a collective).
        """
        from srum_ray.models.registry import build_model

        cfg = self.cfg
        if cfg.run.cpu_threads:
            torch.set_num_threads(cfg.run.cpu_threads)
        device = distributed.learner_device(
            cfg.run.device, remote=self.remote, num_gpus=cfg.runtime.learner.num_gpus
        )
        distributed.prepare_accelerator(device)
        self.device = device
        if cfg.train.engine == "deepspeed":
            distributed.set_dist_env(self.master_addr, self.master_port, self.rank, self.world_size)
        model = build_model(cfg.model, cfg.generation, device=device, dtype=cfg.run.dtype, parts=("generator",))
        self.generator = model.generator  # the understanding half is not trained
        self.engine = build_engine(
            self.generator, cfg.train, cfg.run.seed, dtype=cfg.run.dtype, world_size=self.world_size
        )
        log.info("learner rank %d/%d ready on %s (%s engine)", self.rank, self.world_size, device,
                 cfg.train.engine)

    def _engine(self):
        if self.engine is None:
            raise RuntimeError("LearnerWorker.setup() has not run")
        return self.engine

    def train_steps(
        self, batch: RolloutBatch, step_indices: Sequence[Sequence[int]], lambda_c: float
    ) -> list[dict[str, float]]:
        """One optimizer step per entry of ``step_indices`` (global rows of ``batch``).

        Each rank trains on its :func:`rank_rows` share of every step. A collective.

        Returns:
            One metrics dict per step (the engine's keys; loss terms averaged over ranks).
        """
        engine = self._engine()
        out = []
        for rows in step_indices:
            mine = rank_rows(list(rows), self.rank, self.world_size, self.cfg.train.grad_accum_steps)
            out.append(engine.train_batch(batch.select(mine), lambda_c))
        return out

    def _full_state(self, on_device: bool) -> dict[str, torch.Tensor]:
        """Full trainable weights, on CPU or on the engine's device (a collective at ZeRO-3)."""
        engine = self._engine()
        if self.cfg.train.engine == "deepspeed":
            return engine.state_dict_for_sync(device=None if on_device else "cpu")
        state = engine.state_dict_for_sync()
        # copies: the torch engine's tensors are the live parameters
        return {k: v.detach().to(self.device if on_device else "cpu", copy=True) for k, v in state.items()}

    def state_dict_for_sync(self, return_weights: bool = True) -> dict[str, torch.Tensor] | None:
        """Full trainable weights on CPU (a collective at ZeRO-3); ``None`` if not wanted here.

        Returned as a :class:`~srum_ray.runtime.sync.WireState` (one copy into the object
        store; readers on this node map it)."""
        from srum_ray.runtime.sync import WireState

        state = self._full_state(on_device=False)
        self._last_nbytes = sum(t.numel() * t.element_size() for t in state.values())
        return WireState(state) if return_weights else None

    def state_nbytes(self) -> int:
        """Bytes of the last state dict :meth:`state_dict_for_sync` produced here."""
        return self._last_nbytes

    # ------------------------------------------------------------------ collective sync
    def sync_address(self) -> tuple[str, int]:
        """Host and a free port for the weight-sync store this rank (rank 0) will host."""
        return distributed.node_ip(), distributed.free_port()

    def sync_backend(self) -> str:
        """``nccl`` when this rank trains on CUDA, else ``gloo``."""
        return distributed.backend_for(self.device)

    def sync_open(self, host: str, port: int, world_size: int) -> None:
        """Host the weight-sync group as its rank 0 (blocks until every receiver joined)."""
        from srum_ray.runtime.sync import SyncGroup

        if self.rank != 0:
            raise RuntimeError("only learner rank 0 sends weights")
        self._sync = SyncGroup(host, port, 0, world_size, self.sync_backend())

    def sync_send(self) -> int:
        """Broadcast the full weights from rank 0; other ranks only help gather. Bytes sent."""
        state = self._full_state(on_device=True)
        if self.rank != 0:
            return 0
        if self._sync is None:
            raise RuntimeError("sync_open() has not run on learner rank 0")
        return self._sync.send(state)

    def save(self, directory: str) -> None:
        """Engine checkpoint into ``directory`` (a collective for DeepSpeed)."""
        self._engine().save(directory)

    def load(self, directory: str) -> None:
        self._engine().load(directory)

    def global_step(self) -> int:
        return int(self._engine().global_step)

    def weights_checksum(self) -> str:
        """sha256 of the full trainable weights (a collective at ZeRO-3)."""
        return state_checksum(self._engine().state_dict_for_sync())

    def node_id(self) -> str | None:
        """The Ray node this rank runs on (``None`` outside Ray)."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class LearnerGroup:
    """The learner ranks of ``runtime.learner`` as one object.

    ``replicas == 0``: one :class:`LearnerWorker` in this process (world size 1, no Ray).
    ``replicas == N >= 1``: N Ray actors with ``num_cpus`` / ``num_gpus`` / ``resources`` from
    ``runtime.learner``; ``ray.init`` must have run.

    Raises:
        ValueError: more than one rank with ``train.engine: torch``, or a batch size that
            does not split over the ranks and micro-batches.
    """

    def __init__(self, cfg: SrumConfig) -> None:
        self.cfg = cfg
        role = cfg.runtime.learner
        self.world_size = max(1, role.replicas)
        if self.world_size > 1 and cfg.train.engine != "deepspeed":
            raise ValueError(
                f"train.engine 'torch' runs one process, but runtime.learner.replicas is "
                f"{role.replicas}: set train.engine=deepspeed for more than one learner rank"
            )
        micro_batch_size(cfg.train.batch_size, self.world_size, cfg.train.grad_accum_steps)
        self.local: LearnerWorker | None = None
        self.workers: list[Any] = []
        if role.replicas == 0:
            self.local = LearnerWorker(cfg)
            self.local.setup()
            return
        import ray

        actor = ray.remote(LearnerWorker)
        opts: dict[str, Any] = {"num_cpus": role.num_cpus, "num_gpus": role.num_gpus}
        if role.resources:
            opts["resources"] = dict(role.resources)
        first = actor.options(**opts).remote(cfg, 0, self.world_size, remote=True)
        addr, port = ray.get(first.master_address.remote())
        self.workers = [first] + [
            actor.options(**opts).remote(cfg, r, self.world_size, addr, port, remote=True)
            for r in range(1, self.world_size)
        ]
        try:
            _get_all([w.setup.remote() for w in self.workers])
        except BaseException:
            self.shutdown()
            raise
        log.info("learner group: %d ranks, master %s:%d", self.world_size, addr, port)

    # ------------------------------------------------------------------ helpers
    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every rank at once; results in rank order."""
        if self.local is not None:
            return [getattr(self.local, method)(*args, **kwargs)]
        return _get_all([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    # ------------------------------------------------------------------ API
    def train_round(
        self, batch: RolloutBatch, step_indices: Sequence[Sequence[int]], lambda_c: float
    ) -> list[dict[str, float]]:
        """Optimizer steps over ``batch`` (``step_indices[k]``: global rows of step k).

        The batch (without its images) goes into the object store once; every rank reads it.

        Returns:
            Rank 0's metrics, one dict per step.
        """
        bare = RolloutBatch(batch.records, batch.latents, dict(batch.cond), batch.weights)
        steps = [list(map(int, rows)) for rows in step_indices]
        if self.local is not None:
            return self.local.train_steps(bare, steps, lambda_c)
        import ray

        ref = ray.put(bare)
        return self._all("train_steps", ref, steps, lambda_c)[0]

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """Rank 0's full trainable weights (every rank takes part in the gather)."""
        if self.local is not None:
            return self.local.state_dict_for_sync()
        import ray

        return ray.get(self.state_dict_ref())

    def state_dict_ref(self):
        """Rank 0's full weights as a Ray ``ObjectRef``, not fetched to the driver.

        Waits until every rank has finished the gather (errors surface here).
        """
        import ray

        if self.local is not None:
            if not ray.is_initialized():
                raise RuntimeError("state_dict_ref needs Ray (ray.init) even for a local learner")
            return ray.put(self.local.state_dict_for_sync())  # a WireState

        refs = [w.state_dict_for_sync.remote(i == 0) for i, w in enumerate(self.workers)]
        _get_all(refs[1:])
        ray.wait(refs[:1], fetch_local=False)
        return refs[0]

    def state_nbytes_ref(self, ref: Any = None):
        """Bytes of the state dict behind the last :meth:`state_dict_ref`, as an ObjectRef."""
        import ray

        if self.local is not None:
            return ray.put(self.local.state_nbytes())
        return self.workers[0].state_nbytes.remote()

    # ------------------------------------------------------------------ collective sync
    def _rank0(self, method: str, *args: Any) -> Any:
        if self.local is not None:
            return getattr(self.local, method)(*args)
        import ray

        return ray.get(getattr(self.workers[0], method).remote(*args))

    def sync_address(self) -> tuple[str, int]:
        """Where the weight-sync store will listen: rank 0's node IP and a free port there."""
        return tuple(self._rank0("sync_address"))

    def sync_backend(self) -> str:
        return self._rank0("sync_backend")

    def sync_open(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 hosts the weight-sync group; blocks until the receivers have joined."""
        self._rank0("sync_open", host, port, world_size)

    def sync_send(self) -> int:
        """Broadcast rank 0's full weights to the sync group (all ranks gather); bytes sent."""
        return int(self._all("sync_send")[0])

    def save(self, directory: str | Path) -> None:
        """Checkpoint into ``directory`` (shared by all ranks' nodes for DeepSpeed)."""
        self._all("save", str(directory))

    def load(self, directory: str | Path) -> None:
        self._all("load", str(directory))

    def global_step(self) -> int:
        return int(self._all("global_step")[0])

    def weights_checksums(self) -> list[str]:
        """Each rank's :meth:`LearnerWorker.weights_checksum`, in rank order."""
        return self._all("weights_checksum")

    def node_ids(self) -> list[str | None]:
        return self._all("node_id")

    def shutdown(self) -> None:
        """Stop the rank actors (a local rank keeps this process's process group)."""
        if self.workers:
            import ray

            for w in self.workers:
                ray.kill(w)
        self.workers = []
        self.local = None
