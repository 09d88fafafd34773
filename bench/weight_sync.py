"""Bandwidth of a learner-to-generators weight push, per sync path, side by side in one run.

    python bench/weight_sync.py --mb 256,2048 --receivers 1 --device cuda     # GPU node
    python bench/weight_sync.py --mb 256,2048 --receivers 1 --repeats 3       # CPU
    python bench/weight_sync.py --mb 8 --receivers 1 --repeats 1              # smoke size

For each size in ``--mb`` (MiB), a sender actor holds a state dict of that many bytes of
``--dtype`` in 64 MiB tensors; ``--receivers`` actors hold tensors of the same names and
shapes. Paths:

* ``object_store``: what ``runtime.weight_sync: object_store`` does: the sender returns its
  state dict as a :class:`srum_ray.runtime.sync.WireState` (one copy into the object store,
  mapped by readers on the node); every receiver gets the same ObjectRef and copies it into
  its tensors (``GeneratorWorker.load_weights``);
* ``object_store_torch``: the same with a plain dict of torch tensors (torch's pickling: what
  the runtime did before, and what a user passing tensors through Ray gets);
* ``collective``: :class:`srum_ray.runtime.sync.SyncGroup` broadcast (gloo on CPU, NCCL on
  CUDA; large tensors in place), what ``runtime.weight_sync: collective`` does.

Bandwidth is bytes of one state dict / wall time of a push to every receiver (best of
``--repeats``; every push carries new values, checked on arrival). On a single GPU the
actors share it (``num_gpus`` = 1 / actors) and ``collective`` is skipped: NCCL cannot put
two ranks on one device. Prints a table and writes JSON.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402

from srum_ray.runtime.sync import SyncGroup, WireState, free_port, state_nbytes  # noqa: E402

CHUNK = 64 * 2**20
PATHS = ("object_store", "object_store_torch", "collective")


def make_state(mb: int, device: str, dtype: torch.dtype, fill: float) -> dict[str, torch.Tensor]:
    size = torch.tensor([], dtype=dtype).element_size()
    n, rest = divmod(mb * 2**20, CHUNK)
    shapes = [CHUNK // size] * n + ([rest // size] if rest else [])
    return {f"w{i:03d}": torch.full((s,), fill, dtype=dtype, device=device) for i, s in enumerate(shapes)}


class Peer:
    def __init__(self, mb: int, device: str, dtype: str, sender: bool) -> None:
        torch.set_num_threads(1)
        self.state = make_state(mb, device, getattr(torch, dtype), 1.0 if sender else 0.0)
        self.group: SyncGroup | None = None

    def _first(self) -> float:
        return float(self.state[next(iter(self.state))][0])

    def bump(self) -> float:
        """Add 1 to every weight, so each push carries new values to check."""
        with torch.no_grad():
            for v in self.state.values():
                v.add_(1)
        return self._first()

    def host(self) -> str:
        return ray.util.get_node_ip_address()

    def get_state(self, wire: bool) -> dict[str, torch.Tensor]:
        if wire:
            return WireState(self.state)
        return {k: v.cpu() for k, v in self.state.items()}

    def load(self, state: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            for k, v in state.items():
                self.state[k].copy_(v)
        return self._first()

    def join(self, host: str, port: int, rank: int, world: int, backend: str) -> bool:
        self.group = SyncGroup(host, port, rank, world, backend)
        return True

    def send(self) -> int:
        return self.group.send(self.state)

    def receive(self) -> float:
        self.group.receive(self.state)
        if self.state[next(iter(self.state))].is_cuda:
            torch.cuda.synchronize()
        return self._first()


def measure(mb: int, a, device: str, paths: list[str]) -> dict[str, list[float]]:
    gpu = 1.0 / (a.receivers + 1) if device == "cuda" else 0
    cls = ray.remote(Peer).options(num_cpus=0.1, num_gpus=gpu)
    sender = cls.remote(mb, device, a.dtype, True)
    receivers = [cls.remote(mb, device, a.dtype, False) for _ in range(a.receivers)]
    ray.get([r.load.remote({}) for r in [sender, *receivers]])  # all built
    out: dict[str, list[float]] = {}
    try:
        for path in paths:
            if path == "collective":
                host, port = ray.get(sender.host.remote()), free_port()
                backend, world = ("nccl" if device == "cuda" else "gloo"), a.receivers + 1
                joins = [r.join.remote(host, port, i + 1, world, backend) for i, r in enumerate(receivers)]
                ray.get([sender.join.remote(host, port, 0, world, backend), *joins])
            times = []
            for _ in range(a.repeats):
                want = ray.get(sender.bump.remote())
                t = time.perf_counter()
                if path == "collective":
                    recv = [r.receive.remote() for r in receivers]
                    ray.get(sender.send.remote())
                    got = ray.get(recv)
                else:
                    ref = sender.get_state.remote(path == "object_store")
                    got = ray.get([r.load.remote(ref) for r in receivers])
                    del ref
                times.append(time.perf_counter() - t)
                assert got == [want] * a.receivers, (path, got, want)
            out[path] = times
            print(f"  {mb} MiB {path}: best {min(times):.3f} s", flush=True)
    finally:
        for h in [sender, *receivers]:
            ray.kill(h)
    return out


def main(argv=None) -> int:
    p = C.parser(__doc__, "weight_sync.json")
    p.add_argument("--mb", default="256,2048", help="comma list of state dict sizes in MiB")
    p.add_argument("--receivers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.mb.split(",") if x]
    paths = [x for x in a.paths.split(",") if x]
    if set(paths) - set(PATHS):
        p.error(f"unknown paths {sorted(set(paths) - set(PATHS))}; known: {', '.join(PATHS)}")
    if a.device == "cuda" and torch.cuda.device_count() < 2 and "collective" in paths:
        print("one GPU: skipping collective (NCCL needs one device per rank)")
        paths.remove("collective")
    ray.init(include_dashboard=False, log_to_driver=False)
    rows, table = [], {}
    try:
        for mb in sizes:
            nbytes = state_nbytes(make_state(mb, "meta", getattr(torch, a.dtype), 0.0))
            got = measure(mb, a, a.device, paths)
            table[str(mb)] = {"bytes": nbytes, "paths": {
                path: {**C.summary(ts), "gb_per_s": nbytes / min(ts) / 1e9} for path, ts in got.items()}}
            for path, r in table[str(mb)]["paths"].items():
                rows.append([path, f"{nbytes / 2**30:.2f}", r["best_s"], r["median_s"], r["gb_per_s"]])
    finally:
        ray.shutdown()
    C.print_table(f"weight push to {a.receivers} receiver(s), {a.dtype}, {a.device}, best of {a.repeats}",
                  ["path", "GiB", "best s", "median s", "GB/s"], rows)
    for mb, entry in table.items():
        ps = entry["paths"]
        entry["ratios"] = {
            "object_store_vs_object_store_torch": C.ratio(ps.get("object_store", {}).get("gb_per_s"),
                                                          ps.get("object_store_torch", {}).get("gb_per_s")),
            "collective_vs_object_store": C.ratio(ps.get("collective", {}).get("gb_per_s"),
                                                  ps.get("object_store", {}).get("gb_per_s")),
        }
        print(f"{mb} MiB: " + ", ".join(f"{k} {C.fmt(v, '.2f')}x" for k, v in entry["ratios"].items()))
    C.write_json(a.out, {"device": a.device, "dtype": a.dtype, "receivers": a.receivers, "repeats": a.repeats,
                         "sizes": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
