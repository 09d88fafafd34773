"""Every benchmark runs at a tiny size and writes JSON whose derived figures follow from its
measurements (the figures themselves depend on the machine and are not asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args, tmp_path):
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RAY_ENABLE_AUTO_CONNECT": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["command"].startswith(f"python bench/{script}")
    assert data["machine"]["cpus"] >= 1 and data["machine"]["torch"]
    return data, p.stdout


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_learner_bench_smoke(tmp_path):
    ways = ["plain", "torch_engine", "deepspeed_z1", "deepspeed_z2", "deepspeed_z3", "deepspeed_stock_z1"]
    data, stdout = run("learner.py", "--preset", "tiny", "--steps", "2", "--warmup", "1",
                       "--ways", ",".join(ways), "--profile", tmp_path=tmp_path)
    assert list(data["ways"]) == ways
    assert data["size"]["batch"] == 2 and data["dtype"] == "bfloat16"
    assert positive(data["params"]) and positive(data["flops_per_step"]) and positive(data["peak_tflops"])
    assert "GEMM" in data["peak_source"]  # on CPU the peak is a measured matmul, and says so
    plain = data["ways"]["plain"]["step_s"]
    for way, r in data["ways"].items():
        assert len(r["times_s"]) == 2  # step_s is their median (times_s are rounded to 1 us)
        assert r["step_s"] == pytest.approx(sum(r["times_s"]) / 2, rel=1e-3, abs=2e-6)
        assert all(positive(r[k]) for k in ("step_s", "samples_per_s", "tflops_per_s", "mfu"))
        assert r["samples_per_s"] == pytest.approx(2 / r["step_s"])
        assert r["mfu"] == pytest.approx(data["flops_per_step"] / r["step_s"] / (data["peak_tflops"] * 1e12))
        assert r["vs_best_plain"] == pytest.approx(r["step_s"] / plain)
        assert r["peak_mem_gb"] >= 0
        assert r["top_ops"] and all(o["calls"] >= 1 for o in r["top_ops"])
    assert "MFU %" in stdout and "deepspeed_z3" in stdout


def test_generator_bench_smoke(tmp_path):
    data, stdout = run("generator.py", "--preset", "tiny", "--steps", "2", "--batch", "2", "--images", "4",
                       "--repeats", "1", tmp_path=tmp_path)
    assert set(data["ways"]) == {"ours_batched", "ours_batch1", "pipe_per_prompt", "pipe_batched"}
    assert positive(data["params"]["transformer"]) and data["steps"] == 2
    rate = {}
    for way, r in data["ways"].items():
        assert positive(r["best_s"]) and r["images_per_s"] == pytest.approx(4 / r["best_s"])
        rate[way] = r["images_per_s"]
    ratios = data["ratios"]
    assert ratios["ours_batched_vs_pipe_per_prompt"] == pytest.approx(rate["ours_batched"] / rate["pipe_per_prompt"])
    assert ratios["ours_batched_vs_pipe_batched"] == pytest.approx(rate["ours_batched"] / rate["pipe_batched"])
    assert "images/s" in stdout


def test_judge_bench_smoke(tmp_path):
    data, stdout = run("judge.py", "--preset", "tiny", "--images", "2", "--batch", "2", "--regions", "2",
                       "--max-new-tokens", "4", "--repeats", "1", tmp_path=tmp_path)
    ways = data["ways"]
    assert set(ways) == {"ours_batched", "ours_batch1", "plain_per_image"}
    # two questions per image: one call per question one by one, one call per question kind batched
    assert ways["ours_batched"]["model_calls"] == 2
    assert ways["ours_batch1"]["model_calls"] == ways["plain_per_image"]["model_calls"] == 4
    for r in ways.values():
        assert positive(r["best_s"]) and r["regions_per_s"] == pytest.approx(4 / r["best_s"])
        assert r["images_per_s"] == pytest.approx(2 / r["best_s"])
    assert data["ratios"]["ours_batched_vs_plain_per_image"] == pytest.approx(
        ways["ours_batched"]["regions_per_s"] / ways["plain_per_image"]["regions_per_s"])
    assert 0.0 <= data["answers_agree"] <= 1.0
    assert "regions/s" in stdout


def test_pipeline_bench_smoke(tmp_path):
    data, stdout = run("pipeline.py", "--rounds", "1", "--ways", "single,staged", tmp_path=tmp_path)
    assert set(data["results"]) == {"single", "staged"}
    for r in data["results"].values():
        assert r["steady_round_s"] > 0 and r["stage_s"]["generate"] > 0
        for role in r["roles"].values():
            assert 0.0 <= role["idle_share"] <= 1.0
            assert role["idle_share"] == pytest.approx(
                max(0.0, 1 - role["busy_s"] / (r["steady_round_s"] * role["workers"])))
        assert r["roles"]["judge"]["busy_s"] == pytest.approx(r["stage_s"]["filter"] + r["stage_s"]["judge"])
    staged = data["results"]["staged"]
    assert staged["speedup_vs_staged"] == pytest.approx(1.0)
    bound = data["derived_bound"]
    assert bound["chunks"] == data["chunks"] >= 1
    assert bound["round_s"] == pytest.approx(bound["bottleneck_s"] + bound["fill_drain_s"] + bound["serial_s"])
    assert bound["bound_speedup"] == pytest.approx(staged["steady_round_s"] / bound["round_s"])
    assert "vs staged" in stdout and "idle share" in stdout


def test_weight_sync_bench_smoke(tmp_path):
    data, stdout = run("weight_sync.py", "--mb", "8", "--receivers", "1", "--repeats", "1", tmp_path=tmp_path)
    entry = data["sizes"]["8"]
    assert set(entry["paths"]) == {"object_store", "object_store_torch", "collective"}
    assert entry["bytes"] == 8 * 2**20
    for p in entry["paths"].values():
        assert positive(p["gb_per_s"]) and p["gb_per_s"] == pytest.approx(entry["bytes"] / p["best_s"] / 1e9)
    ps = entry["paths"]
    assert entry["ratios"]["object_store_vs_object_store_torch"] == pytest.approx(
        ps["object_store"]["gb_per_s"] / ps["object_store_torch"]["gb_per_s"])
    assert "GB/s" in stdout
