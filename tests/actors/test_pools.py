"""Judge and grounder pools on a real local Ray + Serve (one instance for the module).

Tiny random-weight models from configs/tiny.yaml; fractional CPUs so several replicas fit on
a 2-core machine. Requests are hand-made batches (drawn shapes, fixed boxes), so the only
models built are the judge's understanding model and the tiny SAM.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import ray  # noqa: E402 - required by the dev extras: a missing install fails, not skips
from ray import serve  # noqa: E402

from actors.pools import (  # noqa: E402
    GrounderReplica,
    app_name,
    autoscaling_config,
    build_stage,
    deploy_pool,
    deployment_options,
    replica_actor_names,
)
from srum_ray.config.load import load_config  # noqa: E402
from srum_ray.config.schema import PoolConfig  # noqa: E402
from srum_ray.grounding import build_grounder  # noqa: E402
from srum_ray.judging.filter import BoxFilter  # noqa: E402
from srum_ray.judging.judge import Judge  # noqa: E402
from srum_ray.models.registry import build_model  # noqa: E402
from srum_ray.runtime.stage_client import LocalStage, ServeStage, StageReply  # noqa: E402
from srum_ray.stages import filter_stage, judge_stage, propose_stage  # noqa: E402
from srum_ray.types import RolloutBatch, SampleRecord  # noqa: E402

# metrics_interval_s is the knob Ray 2.60 reads for how often handles push autoscaling
# metrics, though it warns that it is deprecated
pytestmark = pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "t-pools"
# short metric windows so scaling decisions follow load within a second or two
FAST_AUTOSCALING = {"look_back_period_s": 1.0, "metrics_interval_s": 0.25}

OVERRIDES = [
    "run.cpu_threads=1",
    "judge.max_retries=1",
    "runtime.judge.num_cpus=0.25",
    "runtime.judge.min_replicas=1",
    "runtime.judge.max_replicas=3",
    "runtime.judge.target_ongoing_requests=1",
    "runtime.judge.upscale_delay_s=0.5",
    "runtime.judge.downscale_delay_s=1.0",
    "runtime.judge.max_ongoing_requests=8",
    "runtime.judge.max_batch_size=4",
    "runtime.judge.batch_wait_timeout_s=0.3",
    "runtime.grounder.num_cpus=0.25",
    "runtime.grounder.min_replicas=2",
    "runtime.grounder.max_replicas=2",
    "runtime.grounder.max_ongoing_requests=4",
    "runtime.grounder.max_batch_size=2",
    "runtime.grounder.batch_wait_timeout_s=0.05",
    # a slower SAM pass (denser point grid) keeps requests in flight long enough to kill one
    "grounder.sam.points_per_side=12",
    "runtime.stage_retries=3",
]
PROMPTS = [
    "a red circle to the left of a blue square",
    "a green triangle above a yellow star",
    "a small red box on top of a large green box",
]


def make_batch(ids: list[str], with_boxes: bool = True) -> RolloutBatch:
    """Drawn shapes at 64 px, two fixed boxes each (what a grounder would have proposed)."""
    records, images = [], []
    for i, sid in enumerate(ids):
        n = int(sid.split("-")[-1])
        im = Image.new("RGB", (64, 64), (240, 240, 240))
        d = ImageDraw.Draw(im)
        d.ellipse([4 + n % 7, 6, 28 + n % 7, 30], fill=(200, 30, 30))
        d.rectangle([34, 30 + n % 5, 60, 58], fill=(30, 30, 200))
        images.append(im)
        rec = SampleRecord(id=sid, round=0, prompt=PROMPTS[n % len(PROMPTS)], seed=n, weights_version=0,
                           width=64, height=64)
        if with_boxes:
            rec.boxes = [[4, 6, 30, 31], [34, 30, 61, 59]]
            rec.kept = [True, True]
        records.append(rec)
    return RolloutBatch(records=records, images=images)


JUDGED_FIELDS = ("kept", "filter_raw", "global_score", "region_scores", "region_objects", "judge_raw", "parse")


def judged(rec: SampleRecord) -> dict:
    return {k: getattr(rec, k) for k in JUDGED_FIELDS}


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs" / "tiny.yaml", OVERRIDES)


@pytest.fixture(scope="module")
def serve_up():
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter() - t
    t = time.perf_counter()
    serve.start(proxy_location="Disabled")
    print(f"\n[timing] ray.init {t_ray:.1f} s, serve.start {time.perf_counter() - t:.1f} s")
    yield
    serve.shutdown()  # a no-op when the last test already stopped it
    ray.shutdown()


@pytest.fixture(scope="module")
def judge_app(serve_up, cfg):
    t = time.perf_counter()
    handle = deploy_pool("judge", cfg, name_prefix=PREFIX, autoscaling_extra=FAST_AUTOSCALING)
    print(f"[timing] judge deploy (1 replica, model built) {time.perf_counter() - t:.1f} s")
    return handle  # removed with everything else by serve.shutdown() at module end


@pytest.fixture(scope="module")
def reference_judge(cfg):
    """The same understanding model, filter and judge built in this process."""
    torch.set_num_threads(1)
    und = build_model(cfg.model, cfg.generation, "cpu", torch.float32).understanding
    box_filter = BoxFilter(und, cfg.filter, batch_size=cfg.judge.batch_size)
    judge = Judge(und, cfg.judge, seed=cfg.run.seed)
    return lambda b: judge_stage(judge, filter_stage(box_filter, b))


def wait_for(pred, timeout_s: float, period_s: float = 0.25):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        v = pred()
        if v:
            return v
        time.sleep(period_s)
    return pred()


# ----------------------------------------------------------------------------- no Ray needed


def test_deployment_options_come_from_pool_config():
    pool = PoolConfig(min_replicas=2, max_replicas=5, num_cpus=0.5, num_gpus=0.25, resources={"judge_node": 0.01},
                      target_ongoing_requests=3.0, upscale_delay_s=1.5, downscale_delay_s=7.0,
                      max_ongoing_requests=6, max_batch_size=3, batch_wait_timeout_s=0.02,
                      look_back_period_s=4.0, metrics_interval_s=0.5, health_check_period_s=2.0)
    opts = deployment_options("judge", pool)
    assert opts == {
        "name": "judge",
        "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.25, "resources": {"judge_node": 0.01}},
        "max_ongoing_requests": 6,
        "autoscaling_config": {
            "min_replicas": 2, "initial_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 3.0,
            "upscale_delay_s": 1.5, "downscale_delay_s": 7.0, "look_back_period_s": 4.0,
            "metrics_interval_s": 0.5,
        },
        "health_check_period_s": 2.0,
    }
    # extras (tests) override what the config says
    extra = deployment_options("judge", pool, {"look_back_period_s": 1.0}, {"health_check_period_s": 0.5})
    assert extra["autoscaling_config"]["look_back_period_s"] == 1.0 and extra["health_check_period_s"] == 0.5
    assert "resources" not in deployment_options("grounder", PoolConfig())["ray_actor_options"]
    with pytest.raises(ValueError, match=r"runtime.judge.min_replicas \(3\) is above max_replicas \(2\)"):
        deployment_options("judge", PoolConfig(min_replicas=3, max_replicas=2))
    with pytest.raises(ValueError, match="runtime.grounder.max_replicas is 0"):
        deployment_options("grounder", PoolConfig(min_replicas=0, max_replicas=0))
    assert autoscaling_config(PoolConfig(), {"min_replicas": 0})["min_replicas"] == 0


def test_driver_stage_when_max_replicas_is_zero(cfg):
    local_cfg = copy.deepcopy(cfg)
    local_cfg.runtime.grounder.min_replicas = 0
    local_cfg.runtime.grounder.max_replicas = 0
    stage = build_stage("grounder", local_cfg)
    assert isinstance(stage, LocalStage) and stage.describe() == "in the driver"
    assert stage.num_replicas() == 1
    batches = [make_batch([f"d-{i}", f"d-{i + 10}"], with_boxes=False) for i in range(3)]
    assert stage.last_busy_s() is None  # nothing called yet from this thread

    def call(b):  # each thread sees the busy time its own call's replica reported
        t = time.perf_counter()
        got = stage.call(b)
        return got, stage.last_busy_s(), time.perf_counter() - t

    with ThreadPoolExecutor(3) as ex:
        out, busy, wall = zip(*ex.map(call, batches))
    assert all(0 < b <= w for b, w in zip(busy, wall))
    ref = build_grounder(cfg.grounder, device="cpu")
    for b, o in zip(batches, out):
        assert o is b  # filled in place, one batch back per call
        expect = [[bx.as_list() for bx in bs] for bs in ref.propose(b.images, [r.prompt for r in b.records])]
        assert [r.boxes for r in o.records] == expect
    counters = stage.take_counters()
    assert counters["grounder_images"] == 6
    assert counters["grounder_boxes"] == sum(len(r.boxes) for b in out for r in b.records)
    assert stage.take_counters() == {} and stage.calls == 3


def test_serve_stage_close_and_release_stop_its_handle():
    class Handle:
        app_name, deployment_name = "srum-x-judge", "JudgeReplica"
        shutdowns = 0

        def shutdown(self):
            self.shutdowns += 1

    h = Handle()
    stage = ServeStage(h, owns_app=False)  # an app it does not own is never deleted
    stage.release()
    assert h.shutdowns == 1
    stage.close()
    assert h.shutdowns == 2
    assert LocalStage(lambda b: b).release() is None


def test_replica_rejects_batch_without_images(cfg):
    rep = GrounderReplica(cfg)
    with pytest.raises(ValueError, match="3 records but no images"):
        rep.process(RolloutBatch(records=make_batch(["x-1", "x-2", "x-3"]).records))
    assert rep.stats()["requests"] == 0


# ----------------------------------------------------------------------------- Serve


def test_serve_judge_equals_in_process(judge_app, reference_judge):
    ids = [f"eq-{i}" for i in range(4)]
    expected = reference_judge(make_batch(ids))
    stage = ServeStage(judge_app, retries=0)
    t = time.perf_counter()
    whole = stage.call(make_batch(ids))
    print(f"[timing] judge request, 4 samples: {time.perf_counter() - t:.2f} s")
    assert [r.id for r in whole.records] == ids
    assert [judged(r) for r in whole.records] == [judged(r) for r in expected.records]
    assert all(r.parse["global"] is not None for r in whole.records)
    # the same samples as 4 one-sample requests, merged by Serve however it likes
    with ThreadPoolExecutor(4) as ex:
        singles = list(ex.map(lambda i: stage.call(make_batch([i])), ids))
    assert [judged(b.records[0]) for b in singles] == [judged(r) for r in expected.records]
    assert stage.retries_used == 0


def test_concurrent_requests_are_batched(judge_app):
    n = 8
    t = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        replies: list[StageReply] = list(
            ex.map(lambda i: judge_app.remote(make_batch([f"b-{i}"])).result(), range(n))
        )
    print(f"[timing] {n} concurrent one-sample judge requests: {time.perf_counter() - t:.2f} s")
    assert Counter(r.batch.records[0].id for r in replies) == Counter(f"b-{i}" for i in range(n))
    calls = {(r.replica, r.batch_seq) for r in replies}
    assert len(calls) < n
    assert max(r.batch_requests for r in replies) > 1
    # each merged call's counters are reported once: the sum over replies counts one global
    # question per sample
    assert sum(r.counters.get("judge_global_parsed", 0) + r.counters.get("judge_global_retried", 0)
               + r.counters.get("judge_global_missing", 0) for r in replies) == n
    st = judge_app.stats.remote().result()
    assert st["role"] == "judge" and st["replica"].startswith(f"SERVE_REPLICA::{app_name('judge', PREFIX)}#judge#")
    assert st["requests"] > st["batches"] >= 1


def test_other_errors_propagate_without_retry(judge_app):
    stage = ServeStage(judge_app, retries=3)
    with pytest.raises(ValueError, match="no images"):
        stage.call(RolloutBatch(records=make_batch(["e-1"]).records))
    assert stage.retries_used == 0


def test_judge_pool_grows_under_load_and_shrinks_back(judge_app):
    stage = ServeStage(judge_app, retries=2)
    assert wait_for(lambda: stage.num_replicas() == 1, 20), "pool did not settle at 1 replica"
    stop = threading.Event()
    done = Counter()

    def load(k: int) -> None:
        i = 0
        while not stop.is_set():
            stage.call(make_batch([f"a-{k}-{i}"]))
            done[k] += 1
            i += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(load, k) for k in range(8)]
        # a new replica is a new worker process: on a loaded 2-core machine that can take a minute
        grown = wait_for(lambda: stage.num_replicas() > 1, 90)
        t_up = time.perf_counter() - t0
        peak = stage.num_replicas()
        stop.set()
        for f in futures:
            f.result()  # a failed request fails the test here
    t1 = time.perf_counter()
    shrunk = wait_for(lambda: stage.num_replicas() == 1, 60)
    print(f"[timing] autoscale: >1 replica after {t_up:.1f} s (peak {peak}), "
          f"back to 1 after {time.perf_counter() - t1:.1f} s, {sum(done.values())} requests")
    assert grown and peak <= 3
    assert shrunk


def test_grounder_replica_killed_mid_round(serve_up, cfg):
    t = time.perf_counter()
    # a 1 s health check: the controller notices the dead replica within a second (default 10 s)
    handle = deploy_pool("grounder", cfg, name_prefix=PREFIX, deployment_extra={"health_check_period_s": 1.0})
    print(f"\n[timing] grounder deploy (2 replicas) {time.perf_counter() - t:.1f} s")
    app = app_name("grounder", PREFIX)
    try:
        stage = ServeStage(handle, retries=3)
        assert stage.num_replicas() == 2
        before = replica_actor_names(app, "grounder")
        assert len(before) == 2
        # enough requests that the victim is still working when it is killed, however long the
        # kill takes to arrive on a loaded machine (with 16 the round could end before it)
        n = 48
        batches = [make_batch([f"k-{2 * i}", f"k-{2 * i + 1}"], with_boxes=False) for i in range(n)]
        first_done = threading.Event()

        def send(b: RolloutBatch) -> RolloutBatch:
            out = stage.call(b)
            first_done.set()
            return out

        with ThreadPoolExecutor(n) as ex:
            futures = [ex.submit(send, b) for b in batches]
            assert first_done.wait(30)
            # 8 requests are on the replicas (4 each), the rest wait in the handle: kill one replica
            victim = before[0]
            actor = ray.get_actor(victim, namespace="serve")
            in_flight = sum(not f.done() for f in futures)
            ray.kill(actor, no_restart=True)
            t_kill = time.perf_counter()
            results = [f.result(timeout=60) for f in futures]
            t_rest = time.perf_counter() - t_kill
        ids = Counter(r.id for b in results for r in b.records)
        assert ids == Counter(f"k-{i}" for i in range(2 * n))  # every sample back exactly once
        assert in_flight > 8, f"only {in_flight} requests left when the replica was killed"
        assert stage.retries_used >= 1
        ref = build_grounder(cfg.grounder, device="cpu")
        for b in results[::4]:  # the answers match the in-process grounder
            expect = [[bx.as_list() for bx in bs] for bs in ref.propose(b.images, [r.prompt for r in b.records])]
            assert [r.boxes for r in b.records] == expect
        t_cmp = time.perf_counter()

        def replaced() -> bool:  # the controller started a new replica in the dead one's place
            names = replica_actor_names(app, "grounder")
            return len(names) == 2 and victim not in names

        assert wait_for(replaced, 30), replica_actor_names(app, "grounder")
        assert wait_for(lambda: stage.num_replicas() == 2, 30)
        print(f"[timing] fault round: retries used {stage.retries_used}, rest of the round after the kill "
              f"{t_rest:.1f} s, replacement seen {time.perf_counter() - t_cmp:.1f} s after")
    finally:
        serve.delete(app, _blocking=False)


def test_shutdown_pools_leaves_a_serve_it_does_not_own_then_stops_its_own(judge_app):
    from actors.pools import serve_running, shutdown_pools

    def serve_actors():
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == "serve"]

    assert app_name("judge", PREFIX) in serve.status().applications
    assert serve_running()
    # Serve started by someone else (a demo's session): only our apps go, the controller stays
    shutdown_pools(PREFIX, stop_serve=False)
    assert app_name("judge", PREFIX) not in serve.status().applications
    assert serve_running(), serve_actors()
    # Serve this run started, nothing else on it: stopped
    shutdown_pools(PREFIX)
    assert wait_for(lambda: not serve_actors(), 20), serve_actors()
    assert not serve_running()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class _Echo:
    def __call__(self, x):
        return x


def test_serve_session_stops_only_a_serve_it_started_and_left_empty(serve_up):
    from actors.pools import serve_running, serve_session

    if serve_running():  # an earlier test may have left it up; start from no Serve
        serve.shutdown()
    assert wait_for(lambda: not serve_running(), 20)
    with serve_session() as owned:
        assert owned and serve_running()
        with serve_session() as inner:  # a session inside it (a run on the demo's Serve) owns nothing
            assert not inner
        assert serve_running()  # the inner session left the outer one's Serve up
        assert serve.run(_Echo.bind(), name="run-app", route_prefix=None).remote(3).result() == 3
        serve.delete("run-app")  # a run deletes its own apps
    assert wait_for(lambda: not serve_running(), 20)
    # an app left on it (a user's): Serve stays up with the app
    with serve_session() as owned:
        assert owned
        serve.run(_Echo.bind(), name="user-app", route_prefix=None)
    assert serve_running() and "user-app" in serve.status().applications
    serve.shutdown()
    assert wait_for(lambda: not serve_running(), 20)
