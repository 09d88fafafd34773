"""The benchmarks run at a tiny size and write their JSON (figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script, *args, tmp_path):
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "RAY_ENABLE_AUTO_CONNECT": "0"})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_pipeline_bench_smoke(tmp_path):
    data, stdout = run("pipeline.py", "--rounds", "1", "--ways", "single,staged", tmp_path=tmp_path)
    assert set(data["results"]) == {"single", "staged"}
    for r in data["results"].values():
        assert r["steady_round_s"] > 0 and r["stage_s"]["generate"] > 0
    assert "vs staged" in stdout


def test_weight_sync_bench_smoke(tmp_path):
    data, stdout = run("weight_sync.py", "--mb", "8", "--receivers", "1", "--repeats", "1", tmp_path=tmp_path)
    assert set(data["paths"]) == {"object_store", "collective"}
    assert data["bytes"] == 8 * 2**20
    assert all(p["gb_per_s"] > 0 for p in data["paths"].values())
