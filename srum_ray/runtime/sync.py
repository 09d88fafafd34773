"""How refreshed weights travel from the learner to the generators.

Two paths, chosen by ``runtime.weight_sync``:

* ``object_store``: the learner's rank 0 returns its state dict as a Ray object (it stays in
  the object store of the learner's node); every generator receives the same ObjectRef, so
  each node pulls the bytes once. Works everywhere; bandwidth is that of Ray's object
  transfer (plus a device copy on GPU).
* ``collective``: a standalone torch.distributed process group (its own TCPStore, not the
  default group, so it lives beside DeepSpeed's) between the sender (learner rank 0, or the
  driver when the learner is local) as rank 0 and every generator. The state dict is packed
  into one flat buffer per dtype and broadcast: gloo on CPU, NCCL on GPU (the same code).
  Receivers unpack into their own module's tensors, whose names and shapes must match.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
from collections import OrderedDict
from typing import Mapping

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _groups(state: Mapping[str, torch.Tensor]) -> "OrderedDict[tuple[str, torch.dtype], list[str]]":
    """Tensor names grouped by (device type, dtype), in sorted name order (same on every rank)."""
    groups: "OrderedDict[tuple[str, torch.dtype], list[str]]" = OrderedDict()
    for name in sorted(state):
        t = state[name]
        groups.setdefault((t.device.type, t.dtype), []).append(name)
    return groups


def state_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and raw bytes of a state dict, in name order (any dtype/device)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class SyncGroup:
    """A broadcast group for weight pushes, independent of any default process group.

    Every member constructs it at the same time (rank 0 hosts the TCPStore and waits for
    the others). ``backend`` is ``"gloo"`` for CPU tensors and ``"nccl"`` for CUDA tensors.
    """

    def __init__(
        self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
        timeout_s: float = 300.0,
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight sync backend must be gloo or nccl, got {backend!r}")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.store = dist.TCPStore(host, port, world_size, rank == 0, timeout)
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
        else:  # pragma: no cover - needs GPUs
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([tensor], opts).wait()

    def send(self, state: Mapping[str, torch.Tensor]) -> int:
        """Broadcast ``state`` from rank 0; returns the bytes sent."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends")
        total = 0
        for (_, _dtype), names in _groups(state).items():
            flat = torch.cat([state[n].detach().reshape(-1) for n in names])
            self._broadcast(flat)
            total += flat.numel() * flat.element_size()
        return total

    def receive(self, into: Mapping[str, torch.Tensor]) -> int:
        """Receive a broadcast into the tensors of ``into`` (in place); returns bytes."""
        if self.rank == 0:
            raise RuntimeError("rank 0 sends, it does not receive")
        total = 0
        with torch.no_grad():
            for (_, dtype), names in _groups(into).items():
                sizes = [into[n].numel() for n in names]
                flat = torch.empty(sum(sizes), dtype=dtype, device=into[names[0]].device)
                self._broadcast(flat)
                for n, part in zip(names, torch.split(flat, sizes)):
                    into[n].copy_(part.view_as(into[n]))
                total += flat.numel() * flat.element_size()
        return total
