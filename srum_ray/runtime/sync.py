"""How refreshed weights travel from the learner to the generators.

Two paths, chosen by ``runtime.weight_sync``:

* ``object_store``: the learner's rank 0 returns its state dict as a Ray object (it stays in
  the object store of the learner's node); every generator receives the same ObjectRef, so
  each node pulls the bytes once. The state dict travels as a :class:`WireState`: its
  tensors are pickled as raw-byte numpy views, which Ray keeps out of band, so the bytes
  are copied once into the store and a reader on the same node maps them without a copy
  (torch's own tensor pickling copies each tensor through ``torch.save`` bytes on both
  sides). Works everywhere; bandwidth is that of Ray's object transfer (plus a device copy
  on GPU).
* ``collective``: a standalone torch.distributed process group (its own TCPStore, not the
  default group, so it lives beside DeepSpeed's) between the sender (learner rank 0, or the
  driver when the learner is local) as rank 0 and every generator, broadcasting with gloo
  on CPU and NCCL on GPU (the same code). Tensors of at least :data:`BUCKET_BYTES` are
  broadcast in place (no staging copy on either side); smaller ones travel packed into
  flat buckets of about that size. Receivers write into their own module's tensors, whose
  names and shapes must match.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import warnings
from collections import OrderedDict
from typing import Any, Mapping

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
        h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


#: tensors at least this large are broadcast in place; smaller ones share flat buckets
BUCKET_BYTES = 32 * 2**20


def _rebuild_wire_state(items: list[tuple[str, Any, str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    out = {}
    with warnings.catch_warnings():  # object-store buffers are read-only; torch warns on wrapping
        warnings.simplefilter("ignore", UserWarning)
        for name, raw, dtype, shape in items:
            out[name] = torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape)
    return out


class WireState(dict):
    """A state dict that crosses Ray's object store with one copy instead of four.

    Pickled, each tensor becomes a ``uint8`` numpy view of its bytes (CUDA tensors are first
    copied to the host), which Ray's serializer stores out of band: the bytes are copied once
    into the object store, and a reader on the same node maps them without copying.
    Unpickled, it is a plain ``dict`` of tensors viewing those bytes: they are **read-only**
    (copy before writing; ``load_state_dict`` copies).
    """

    def __reduce__(self):
        items = []
        for name, t in self.items():
            t = t.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy()
            items.append((name, raw, str(t.dtype).removeprefix("torch."), tuple(t.shape)))
        return (_rebuild_wire_state, (items,))


def _plan(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Broadcast units in order (the same on every rank: names, shapes and dtypes agree).

    A unit of one name is a tensor sent on its own (in place where contiguous); a unit of
    several names is packed into one flat buffer of about :data:`BUCKET_BYTES`.
    """
    units: list[list[str]] = []
    for _key, names in _groups(state).items():
        bucket: list[str] = []
        size = 0
        for name in names:
            t = state[name]
            nbytes = t.numel() * t.element_size()
            if nbytes >= BUCKET_BYTES:
                units.append([name])
                continue
            if bucket and size + nbytes > BUCKET_BYTES:
                units.append(bucket)
                bucket, size = [], 0
            bucket.append(name)
            size += nbytes
        if bucket:
            units.append(bucket)
    return units


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
        with torch.no_grad():
            for unit in _plan(state):
                if len(unit) == 1 and state[unit[0]].is_contiguous():
                    buf = state[unit[0]].detach()
                else:
                    buf = torch.cat([state[n].detach().reshape(-1) for n in unit])
                self._broadcast(buf)
                total += buf.numel() * buf.element_size()
        return total

    def receive(self, into: Mapping[str, torch.Tensor]) -> int:
        """Receive a broadcast into the tensors of ``into`` (in place); returns bytes."""
        if self.rank == 0:
            raise RuntimeError("rank 0 sends, it does not receive")
        total = 0
        with torch.no_grad():
            for unit in _plan(into):
                first = into[unit[0]]
                if len(unit) == 1 and first.is_contiguous():
                    self._broadcast(first)  # straight into the module's tensor
                    total += first.numel() * first.element_size()
                    continue
                sizes = [into[n].numel() for n in unit]
                flat = torch.empty(sum(sizes), dtype=first.dtype, device=first.device)
                self._broadcast(flat)
                for n, part in zip(unit, torch.split(flat, sizes)):
                    into[n].copy_(part.view_as(into[n]))
                total += flat.numel() * flat.element_size()
        return total
