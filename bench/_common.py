"""What every benchmark shares: timing, memory peaks, FLOP counting, the machine, tables, JSON.

Each ``bench/*.py`` script measures one stage of a round against what a user would run
otherwise, side by side in one process, prints a table and writes JSON whose top level holds
``date``, ``command``, ``machine`` (:func:`machine`) and the script's own results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

#: dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of the device name;
#: the first match wins, so more specific names come first
GPU_PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM / HBM3
    ("H200", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    """Argument parser with the first docstring line as description and ``--out``."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / out), help="JSON output path")
    return p


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default). 1 keeps timings stable on a shared "
                        "machine: with every core busy, OpenMP barriers stall on descheduled threads")


def setup(a: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, silence repeated warnings; the device ``--device`` names."""
    if a.threads:
        torch.set_num_threads(a.threads)
    quiet()
    return pick_device(a.device)


def quiet() -> None:
    """Silence library warnings that repeat on every step (deprecations, dtype casts)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("diffusers", "transformers", "DeepSpeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dl

        dl.set_verbosity_error()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as tl

        tl.set_verbosity_error()
    except ImportError:
        pass


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    return torch.device(name)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": ram_gb(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1,
               device: torch.device | str = "cpu") -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (device-synced)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return times


def summary(times: Sequence[float]) -> dict[str, Any]:
    """``times_s`` with their best, median and mean."""
    return {"times_s": [round(t, 6) for t in times], "best_s": min(times),
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times)}


# ---------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``, or sampled CPU RSS.

    On CPU a thread samples this process's resident set every ``interval_s``; ``peak_bytes``
    is the highest RSS seen during the block (the whole process: what a user would see) and
    ``delta_bytes`` its rise over the RSS at entry.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
        else:
            self.start_bytes = self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    @property
    def delta_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes


def free_memory() -> None:
    """Collect garbage, empty the CUDA cache, and hand freed heap pages back to the OS
    (glibc ``malloc_trim``), so that the next CPU RSS rise counts the next way's memory."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------- FLOPs
def _sdpa_cpu_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU flash-attention kernels, which torch's counter lacks
    (CUDA's flash / efficient / cuDNN kernels are counted by torch itself)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v),
    }


@contextmanager
def count_flops() -> Iterator[Any]:
    """``with count_flops() as fc: ...``; then ``fc.get_total_flops()``.

    torch's :class:`~torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
    attention; forward and backward when the backward runs inside the block; elementwise
    ops are not counted), plus the CPU attention kernels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping()) as fc:
        yield fc


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU from :data:`GPU_PEAK_BF16_TFLOPS`, or None if unknown."""
    for key, tflops in GPU_PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048,
                           repeats: int = 20) -> float:
    """Best TFLOP/s of an ``n x n`` GEMM in ``dtype``: the CPU peak we divide by (no
    vendor figure applies to a shared, virtualised CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(time_calls(lambda: a @ b, repeats=repeats, warmup=2, device=device))
    return 2 * n**3 / best / 1e12


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None) -> tuple[float, str]:
    """The peak the MFU is divided by, and where it comes from."""
    if override:
        return float(override), "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf = gpu_peak_tflops(name)
        if tf is not None:
            return tf, f"{name}: dense bf16 datasheet peak"
        return measured_matmul_tflops(device, dtype, n=8192), f"{name}: measured 8192^3 GEMM"
    return measured_matmul_tflops(device, dtype), f"CPU: measured 2048^3 {str(dtype)[6:]} GEMM"


def top_ops(fn: Callable[[], Any], n: int = 12) -> list[dict[str, Any]]:
    """The ``n`` operators with the most self time in one call of ``fn`` (torch profiler,
    CPU and CUDA): ``name``, ``self_ms`` (device time on CUDA), ``calls``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    cuda = torch.cuda.is_available()
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        rows.append({"name": e.key, "self_ms": us / 1e3, "calls": e.count})
    rows.sort(key=lambda r: -r["self_ms"])
    return rows[:n]


# ---------------------------------------------------------------------------- output
def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a fixed-width table; floats with 3 decimals, None as ``-``."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(columns)]
    lines = [title, "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(columns, widths)))]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    return text


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``date``, ``command`` and ``machine`` added at the top."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [os.path.relpath(sys.argv[0], ROOT) if sys.argv and sys.argv[0] else "?", *sys.argv[1:]]
    doc = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + shlex.join(argv),
           "machine": machine(), **payload}
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def selected_ways(parser, text: str, known) -> list[str]:
    """The comma-separated ways of ``--ways``; a parser error naming unknown ones."""
    ways = [w for w in text.split(",") if w]
    if set(ways) - set(known):
        parser.error(f"unknown ways {sorted(set(ways) - set(known))}; known: {', '.join(known)}")
    return ways
