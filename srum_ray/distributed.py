"""Device and torch.distributed calls, in one place.

Everything that touches process-group environment variables, ports, backends or DeepSpeed's
communication setup lives here, so learner code and weight sync read as plain steps:

* :func:`set_dist_env` writes ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and
  ``LOCAL_RANK`` (DeepSpeed needs all five even for one rank, or it tries MPI discovery);
* :func:`backend_for` picks ``nccl`` on CUDA and ``gloo`` on CPU;
* :func:`init_deepspeed_comm` joins (or reuses) the process group through DeepSpeed, after
  :func:`skip_cpu_shm_comm_build` turned off a C++ op DeepSpeed would otherwise compile with
  g++ on first use on CPU (about 40 s) and that training never calls;
* :func:`all_reduce_mean` and friends are no-ops when no process group exists.
"""

from __future__ import annotations

import os
import socket
from typing import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_mean", "backend_for", "barrier", "free_port", "init_deepspeed_comm",
    "is_initialized", "learner_device", "node_ip", "prepare_accelerator", "rank", "set_dist_env",
    "shutdown", "skip_cpu_shm_comm_build", "world_size",
]

#: DeepSpeed op name of the shared-memory all-reduce kernel (used only by inference all-reduce)
SHM_COMM_OP = "deepspeed_shm_comm"
#: set to 1 to let DeepSpeed build and load its CPU shared-memory comm op anyway
KEEP_SHM_ENV = "SRUM_DS_SHM_COMM"


def free_port(host: str = "") -> int:
    """A TCP port that was free a moment ago on this host (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """This node's IP as Ray sees it (inside a Ray worker), else ``127.0.0.1``."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def set_dist_env(
    master_addr: str, master_port: int, rank: int, world_size: int, local_rank: int = 0
) -> None:
    """Write the five ``env://`` rendezvous variables of this process.

    Raises:
        ValueError: if ``rank`` is outside ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    os.environ.update(
        MASTER_ADDR=str(master_addr),
        MASTER_PORT=str(int(master_port)),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
    )


def backend_for(device: str | torch.device) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def learner_device(run_device: str, *, remote: bool, num_gpus: float) -> str:
    """The device a learner rank trains on.

    Args:
        run_device: ``run.device`` (``auto``, ``cpu`` or ``cuda``).
        remote: the rank is a Ray actor (it may only use GPUs Ray gave it).
        num_gpus: GPUs per rank from ``runtime.learner.num_gpus``.

    Returns:
        ``"cpu"`` or ``"cuda"`` (the first visible GPU; Ray masks the others).

    Raises:
        RuntimeError: ``cuda`` was asked for but no GPU is visible, or a remote rank asked for
            ``cuda`` with ``runtime.learner.num_gpus = 0``.
    """
    if run_device == "cpu":
        return "cpu"
    if remote and num_gpus <= 0:
        if run_device == "cuda":
            raise RuntimeError(
                "run.device is cuda but runtime.learner.num_gpus is 0: give each learner rank a GPU"
            )
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if run_device == "cuda":
        raise RuntimeError("run.device is cuda but this learner rank sees no CUDA device")
    return "cpu"


def prepare_accelerator(device: str | torch.device) -> None:
    """Tell DeepSpeed which accelerator to use before it picks one (``DS_ACCELERATOR``).

    Must run before DeepSpeed's first ``get_accelerator()``; an explicit value in the
    environment is kept.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.device(device).type == "cuda" else "cpu")


def skip_cpu_shm_comm_build() -> bool:
    """Stop DeepSpeed from JIT-compiling its CPU shared-memory comm op; True when skipped.

    DeepSpeed 0.19's ``TorchBackend`` builds ``deepspeed_shm_comm`` (g++; 40 s on an idle
    2-core machine, 96 s measured on a loaded one, 1.5 GB peak; cached under
    ``TORCH_EXTENSIONS_DIR``) on first use whenever its CPU accelerator
    reports the op compatible. The op only serves ``inference_all_reduce`` (tensor-parallel
    inference); ZeRO training reduces through the gloo process group. DeepSpeed reads
    compatibility from the dict ``deepspeed.ops.__compatible_ops__`` (built once, edits
    persist), so marking the op incompatible there skips the build without patching code.
    Nothing is skipped when ``SRUM_DS_SHM_COMM=1``, when the op was prebuilt at install
    (``DS_BUILD_SHM_COMM=1``), or when the accelerator is not the CPU one.
    """
    if os.environ.get(KEEP_SHM_ENV) == "1" or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return False
    import deepspeed.ops
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get(SHM_COMM_OP, False):
        return False
    ops = deepspeed.ops.__compatible_ops__
    if SHM_COMM_OP not in ops:
        return False
    ops[SHM_COMM_OP] = False
    return True


def init_deepspeed_comm(device: str | torch.device) -> None:
    """Join the process group described by the ``env://`` variables, through DeepSpeed.

    Reuses an existing group (several engines in one process share it). Call
    :func:`set_dist_env` first.

    Raises:
        RuntimeError: if a rendezvous variable is missing.
    """
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed environment incomplete, missing {', '.join(missing)}: call set_dist_env first"
        )
    prepare_accelerator(device)
    skip_cpu_shm_comm_build()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend_for(device), auto_mpi_discovery=False,
                               verbose=False)


def shutdown() -> None:
    """Leave the process group (through DeepSpeed when it made it) so a new one can start.

    Engines built on the old group must not be used afterwards.
    """
    if not is_initialized():
        return
    import sys

    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and getattr(ds_comm, "cdb", None) is not None:
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(values: Sequence[float], device: str | torch.device = "cpu") -> list[float]:
    """Mean of each value over all ranks (identity without a process group).

    A collective: every rank must call it with the same number of values.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()
