"""Bandwidth of a learner-to-generators weight push, per sync path, side by side in one run.

    python bench/weight_sync.py [--mb 256] [--receivers 2] [--repeats 3] [--device cpu|cuda]

A sender actor holds a state dict of ``--mb`` MiB (float32 on CPU, bf16 on CUDA, in 64 MiB
tensors); ``--receivers`` actors hold tensors of the same names and shapes. Paths:

* ``object_store``: the sender returns its state dict as an object; every receiver gets the
  same ObjectRef and copies it into its tensors (what ``runtime.weight_sync: object_store``
  does through ``GeneratorWorker.load_weights``);
* ``collective``: :class:`srum_ray.runtime.sync.SyncGroup` broadcast (gloo on CPU, NCCL on
  CUDA), what ``runtime.weight_sync: collective`` does.

Bandwidth is bytes of one state dict / wall time of a push to every receiver. Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402

from srum_ray.runtime.sync import SyncGroup, free_port, state_nbytes  # noqa: E402

CHUNK = 64 * 2**20


def make_state(mb: int, device: str, fill: float) -> dict[str, torch.Tensor]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    per = CHUNK // torch.tensor([], dtype=dtype).element_size()
    n, rest = divmod(mb * 2**20, CHUNK)
    shapes = [per] * n + ([rest // torch.tensor([], dtype=dtype).element_size()] if rest else [])
    return {f"w{i:03d}": torch.full((s,), fill, dtype=dtype, device=device) for i, s in enumerate(shapes)}


class Peer:
    def __init__(self, mb: int, device: str, sender: bool) -> None:
        self.state = make_state(mb, device, 1.0 if sender else 0.0)
        self.group: SyncGroup | None = None

    def bump(self) -> float:
        """Add 1 to every weight, so each push carries new values to check."""
        with torch.no_grad():
            for v in self.state.values():
                v.add_(1)
        return float(self.state[next(iter(self.state))][0])

    def host(self) -> str:
        return ray.util.get_node_ip_address()

    def get_state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.state.items()} if self.state[next(iter(self.state))].is_cuda else self.state

    def load(self, state: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            for k, v in state.items():
                self.state[k].copy_(v)
        return float(self.state[next(iter(self.state))][0])

    def join(self, host: str, port: int, rank: int, world: int, backend: str) -> bool:
        self.group = SyncGroup(host, port, rank, world, backend)
        return True

    def send(self) -> int:
        return self.group.send(self.state)

    def receive(self) -> float:
        self.group.receive(self.state)
        if self.state[next(iter(self.state))].is_cuda:
            torch.cuda.synchronize()
        return float(self.state[next(iter(self.state))][0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--receivers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=str(ROOT / "bench/results/weight_sync.json"))
    a = p.parse_args(argv)
    gpu = 1.0 / (a.receivers + 1) if a.device == "cuda" else 0
    ray.init(include_dashboard=False, log_to_driver=False)
    cls = ray.remote(Peer).options(num_cpus=0.1, num_gpus=gpu)
    sender = cls.remote(a.mb, a.device, True)
    receivers = [cls.remote(a.mb, a.device, False) for _ in range(a.receivers)]
    nbytes = state_nbytes(make_state(a.mb, "cpu", 0.0)) if a.device == "cpu" else a.mb * 2**20
    ray.get([r.load.remote({}) for r in receivers])  # all built
    results = {}
    times = []
    for _ in range(a.repeats):
        want = ray.get(sender.bump.remote())
        t = time.perf_counter()
        ref = sender.get_state.remote()
        got = ray.get([r.load.remote(ref) for r in receivers])
        times.append(time.perf_counter() - t)
        assert got == [want] * a.receivers, (got, want)
        del ref
    results["object_store"] = times
    host, port = ray.get(sender.host.remote()), free_port()
    backend = "nccl" if a.device == "cuda" else "gloo"
    world = a.receivers + 1
    joins = [r.join.remote(host, port, i + 1, world, backend) for i, r in enumerate(receivers)]
    ray.get([sender.join.remote(host, port, 0, world, backend)] + joins)
    times = []
    for _ in range(a.repeats):
        want = ray.get(sender.bump.remote())
        t = time.perf_counter()
        recv = [r.receive.remote() for r in receivers]
        ray.get(sender.send.remote())
        got = ray.get(recv)
        times.append(time.perf_counter() - t)
        assert got == [want] * a.receivers, (got, want)
    results["collective"] = times
    ray.shutdown()
    print(f"\nweight push of {nbytes / 2**30:.2f} GiB to {a.receivers} receivers on {a.device} ({a.repeats} repeats)")
    print(f"{'path':<14} {'best s':>8} {'mean s':>8} {'GB/s':>8}")
    table = {}
    for path, ts in results.items():
        best = min(ts)
        table[path] = {"times_s": ts, "best_s": best, "gb_per_s": nbytes / best / 1e9}
        print(f"{path:<14} {best:>8.3f} {sum(ts) / len(ts):>8.3f} {nbytes / best / 1e9:>8.2f}")
    ratio = table["object_store"]["best_s"] / table["collective"]["best_s"]
    print(f"collective / object_store speed: {ratio:.2f}x")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                               "device": a.device, "bytes": nbytes, "receivers": a.receivers, "paths": table}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
