"""Dashboard metrics: rows -> points (pure), the Prometheus reader, and a real export through
a local Ray's metrics agent read back from its endpoint."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srum_ray.runtime.metrics import (
    METRICS,
    Point,
    RunMetrics,
    parse_prometheus,
    round_points,
    scrape,
    step_points,
)

ROOT = Path(__file__).resolve().parents[2]
STEP_ROW = {
    "kind": "step", "round": 0, "round_step": 3, "loss": 1.25, "reward_term": 0.75,
    "ref_term": 0.5, "grad_norm": 2.0, "lr": 1e-4, "step": 4,
}
ROUND_ROW = {
    "kind": "round", "round": 1, "weights_version": 2, "global_step": 8,
    "loss_mean": 1.0, "samples": 8, "samples_trained": 6,
    "global_score_mean": 0.25, "local_score_mean": -0.5, "weight_mean": 0.125, "alpha_mean": 0.75,
    "parse": {"global_parsed": 6, "global_retried": 1, "global_missing": 1,
              "region_parsed": 5, "region_missing": 2},
    "missing_policy": {"sample_dropped": 2, "region_dropped": 2},
    "replicas": {"generator": 2, "judge": 1},
    "timings_s": {"judge": 1.5}, "wall_s": 4.0, "samples_per_s": 2.0,
}


def test_step_points_take_last_values():
    assert step_points(STEP_ROW) == [
        Point("srum_loss", 1.25), Point("srum_reward_term", 0.75), Point("srum_ref_term", 0.5),
        Point("srum_grad_norm", 2.0), Point("srum_lr", 1e-4), Point("srum_global_step", 4.0),
    ]


def test_round_points_gauges_counters_and_tags():
    pts = round_points(ROUND_ROW)
    by = {(p.name, p.tags): p.value for p in pts}
    assert len(by) == len(pts)  # no series twice
    assert by[("srum_round", ())] == 1
    assert by[("srum_weights_version", ())] == 2
    assert by[("srum_global_score_mean", ())] == 0.25
    assert by[("srum_local_score_mean", ())] == -0.5
    assert by[("srum_weight_mean", ())] == 0.125
    assert by[("srum_alpha_mean", ())] == 0.75
    assert by[("srum_samples_per_second", ())] == 2.0
    assert by[("srum_round_seconds", ())] == 4.0
    assert by[("srum_replicas", (("role", "generator"),))] == 2
    assert by[("srum_samples", ())] == 8
    assert by[("srum_samples_dropped", ())] == 2
    fail = {p.tags: p.value for p in pts if p.name == "srum_judge_parse_failures"}
    # parsed counts are not failures; a zero count (region_retried absent) makes no point
    assert fail == {
        (("kind", "global"), ("status", "retried")): 1,
        (("kind", "global"), ("status", "missing")): 1,
        (("kind", "region"), ("status", "missing")): 2,
    }
    assert all(p.name in METRICS for p in pts)
    assert "srum_drift_warnings" not in by  # no warnings in the row
    warned = round_points({**ROUND_ROW, "warnings": ["the judge's mean global score fell"]})
    assert Point("srum_drift_warnings", 1.0) in warned


def test_round_points_skip_none_and_derive_dropped():
    row = {"round": 0, "global_score_mean": None, "samples": 4, "samples_trained": 1, "parse": {}}
    pts = round_points(row)
    names = [p.name for p in pts]
    assert "srum_global_score_mean" not in names
    # no missing_policy: dropped = samples - samples_trained
    assert Point("srum_samples_dropped", 3.0) in pts
    assert "srum_judge_parse_failures" not in names
    assert "srum_samples_unselected" not in names


def test_round_points_count_samples_left_out_by_selection():
    row = {"round": 0, "samples": 10, "samples_trained": 3, "missing_policy": {},
           "selection": {"below_min_global": 5, "below_min_region": 1}}
    pts = round_points(row)
    assert Point("srum_samples_unselected", 6.0) in pts
    # the rest of the untrained samples were dropped for missing scores
    assert Point("srum_samples_dropped", 1.0) in pts
    row["missing_policy"]["sample_dropped"] = 0
    assert "srum_samples_dropped" not in [p.name for p in round_points(row)]
    # rows written before the selection key had these counts with the missing-score policy's
    old = {"round": 0, "samples": 10, "samples_trained": 3,
           "missing_policy": {"below_min_global": 5, "below_min_region": 1}}
    assert Point("srum_samples_unselected", 6.0) in round_points(old) and Point("srum_samples_dropped", 1.0) in round_points(old)


def test_parse_prometheus_reads_labels_and_skips_comments():
    text = (
        "# HELP ray_srum_round index\n# TYPE ray_srum_round gauge\n"
        'ray_srum_round{Component="core_worker",run="a \\"b\\""} 3.0\n'
        'ray_srum_stage_seconds_bucket{le="0.5",run="a",stage="judge"} 2.0\n'
        "ray_other_metric 7\n"
        "ray_srum_plain 1.5e3 1700000000000\n"
    )
    got = parse_prometheus(text, "ray_srum_")
    assert [(s.name, s.value) for s in got] == [
        ("ray_srum_round", 3.0), ("ray_srum_stage_seconds_bucket", 2.0), ("ray_srum_plain", 1500.0),
    ]
    assert got[0].labels == {"Component": "core_worker", "run": 'a "b"'}
    assert got[1].labels == {"le": "0.5", "run": "a", "stage": "judge"}


def test_inactive_without_ray_and_does_not_import_it():
    """In a fresh process without Ray running (the single-process loop), every call is a
    no-op, and the calls do not import Ray just to find it is not running."""
    code = (
        "import sys\n"
        "from srum_ray.runtime.metrics import RunMetrics\n"
        "from tests.runtime.test_metrics import ROUND_ROW, STEP_ROW\n"
        "before = 'ray' in sys.modules\n"
        "m = RunMetrics(True, 'x')\n"
        "m.on_step(STEP_ROW); m.on_round(ROUND_ROW); m.observe_stage('judge', 0.1)\n"
        "m.set_queue_depth('judge', 2); m.set_replicas('judge', 1)\n"
        "assert not m.active and m._instruments is None\n"
        "assert ('ray' in sys.modules) == before, 'the calls imported ray'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_disabled_is_a_no_op():
    m = RunMetrics(False, "x")
    m.on_step(STEP_ROW)
    m.on_round(ROUND_ROW)
    m.set_replicas("judge", 1)
    assert not m.active and m._instruments is None


# ---------------------------------------------------------------------------- real Ray
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_url():
    import ray

    port = _free_port()
    # 1000 ms is the floor of the report interval (default 10 s): values show in about 1 s
    ray.init(
        num_cpus=1, include_dashboard=False, _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        ray.shutdown()


def _wait_for(url, want, timeout=30.0):
    """Scrape until every (name, labels-subset, value) in ``want`` is present; the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = scrape(url)
        except OSError:
            got = []
        missing = [
            w for w in want
            if not any(s.name == w[0] and w[1].items() <= s.labels.items() and s.value == w[2]
                       for s in got)
        ]
        if not missing or time.monotonic() > deadline:
            return got, missing
        time.sleep(0.25)


def test_values_reach_the_metrics_endpoint(metrics_url):
    off = RunMetrics(False, "off-run")
    off.on_round(ROUND_ROW)
    off.set_replicas("judge", 5)
    m = RunMetrics(True, "m-run")
    assert m.active
    m.on_step(STEP_ROW)
    m.on_step({**STEP_ROW, "loss": 0.5, "step": 5})  # gauges keep the last value
    m.on_round({**ROUND_ROW, "round": 0})
    m.on_round(ROUND_ROW)  # counters add up over rounds
    for s in (0.3, 0.3, 7.0):
        m.observe_stage("judge", s)
    m.set_queue_depth("judge", 3)
    m.set_replicas("judge", 2)
    run = {"run": "m-run"}
    t0 = time.monotonic()
    got, missing = _wait_for(metrics_url, [
        ("ray_srum_round", run, 1.0),
        ("ray_srum_loss", run, 0.5),
        ("ray_srum_global_step", run, 8.0),
        ("ray_srum_weights_version", run, 2.0),
        ("ray_srum_local_score_mean", run, -0.5),
        ("ray_srum_samples_total", run, 16.0),
        ("ray_srum_samples_dropped_total", run, 4.0),
        ("ray_srum_judge_parse_failures_total", {**run, "kind": "region", "status": "missing"}, 4.0),
        ("ray_srum_judge_parse_failures_total", {**run, "kind": "global", "status": "retried"}, 2.0),
        ("ray_srum_queue_depth", {**run, "stage": "judge"}, 3.0),
        ("ray_srum_replicas", {**run, "role": "judge"}, 2.0),
        ("ray_srum_stage_seconds_count", {**run, "stage": "judge"}, 3.0),
        ("ray_srum_stage_seconds_bucket", {**run, "stage": "judge", "le": "0.5"}, 2.0),
        ("ray_srum_stage_seconds_bucket", {**run, "stage": "judge", "le": "10.0"}, 3.0),
    ])
    assert not missing, f"not exported after {time.monotonic() - t0:.1f} s: {missing}"
    assert not [s for s in got if s.labels.get("run") == "off-run"]
    assert not [s for s in got if s.name.startswith("ray_srum_judge_parse")
                and s.labels.get("status") == "parsed"]
