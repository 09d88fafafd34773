"""The Ray runtime on a simulated multi-node cluster: roles placed on their node types, a
round completing across them with streaming and online weights, a judge killed mid-round,
the collective weight-sync path, and resume after the whole job is killed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from actors.pools import app_name, replica_actor_names
from srum_ray.config.load import load_config
from srum_ray.loop import RoundLoop
from srum_ray.rundir import RunDir
from srum_ray.runtime.ray_runtime import RayRuntime

ROOT = Path(__file__).resolve().parents[2]
NODE_TYPES = ("generator_node", "judge_node", "learner_node")


@pytest.fixture(scope="module")
def cluster():
    """A head and one node per role type, each with its custom resource (ray.cluster_utils)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = {}
    for kind in NODE_TYPES:
        node = c.add_node(num_cpus=1, resources={kind: 100})
        nodes[kind] = node.node_id
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    c.shutdown()


def cfg_for(tmp_path, *extra):
    return load_config(
        ROOT / "configs/ray_tiny.yaml",
        [
            f"run.output_dir={tmp_path}", "run.progress=false",
            f"data.prompts=[{ROOT / 'configs/prompts/tiny.txt'}]",
            "generation.batch_size=2",  # 4 chunks a round: several in flight at once
            "runtime.generator.resources={generator_node: 1}",
            "runtime.grounder.resources={judge_node: 1}",
            "runtime.judge.resources={judge_node: 1}",
            "runtime.judge.max_batch_size=1",
            "runtime.learner.resources={learner_node: 1}",
            *extra,
        ],
    )


def samples(rd, r):
    return [json.loads(l) for l in (rd.round_dir(r) / "samples.jsonl").read_text().splitlines()]


def test_roles_on_their_nodes_round_streams_and_survives_a_judge_kill(cluster, tmp_path):
    cfg = cfg_for(tmp_path, "runtime.timeline=true")
    rt = RayRuntime(cfg)
    try:
        gen_nodes = {g.call("node_id") for g in rt.generators}
        assert gen_nodes == {cluster["generator_node"]}
        assert set(rt.learner.node_ids()) == {cluster["learner_node"]}
        for stage in (rt.judge, rt.grounder):
            assert stage._handle.stats.remote().result()["node_id"] == cluster["judge_node"]

        rd = RunDir.create(cfg)
        loop = RoundLoop(cfg, rd, runtime=rt)
        judge_app = app_name("judge", rt.serve_prefix)
        arrivals = []
        real_collect = rt.collect

        def collect_and_kill(specs, r, on_batch):
            def on_batch_and_kill(batch, seconds):
                arrivals.append((r, [rec.id for rec in batch.records]))
                if r == 0 and len(arrivals) == 1:  # the first chunk is judged: kill the judge
                    names = replica_actor_names(judge_app, "judge")
                    assert names
                    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=False)
                on_batch(batch, seconds)

            real_collect(specs, r, on_batch_and_kill)

        rt.collect = collect_and_kill
        loop.run()
        # streaming: chunks arrive one by one, not as one staged batch
        assert len([a for a in arrivals if a[0] == 0]) == 4
        for r in (0, 1):
            recs = samples(rd, r)
            ids = [x["id"] for x in recs]
            assert len(ids) == len(set(ids)) == 8, "every sample judged exactly once"
            assert all(x["parse"]["global"] in {"parsed", "retried", "missing"} for x in recs)
            assert all(x["weights_version"] == r for x in recs)  # online: round r drew version r
        assert rt.judge.retries_used >= 1, "the killed judge's in-flight work was retried"
        assert rt.generator_versions() == [2, 2]
        rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
        rounds = [x for x in rows if x["kind"] == "round"]
        assert rounds[-1]["replicas"]["generator"] == 2 and rounds[-1]["replicas"]["learner"] == 1
        assert rounds[-1]["sync"]["bytes"] > 0
        # the pools report their replicas' busy time apart from the driver's request latency
        t = rounds[-1]["timings_s"]
        assert 0 < t["propose_busy"] <= t["propose"] and 0 < t["judge_busy"] <= t["judge"]
        trace = json.loads((rd.round_dir(1) / "timeline.json").read_text())
        assert any("generate" in str(e.get("name", "")) for e in trace)
    finally:
        rt.shutdown()


def test_collective_sync_and_resume_after_the_job_is_killed(cluster, tmp_path):
    cfg = cfg_for(tmp_path, "runtime.weight_sync=collective", "runtime.judge.max_replicas=1",
                  "runtime.grounder.max_replicas=1")
    rt = RayRuntime(cfg)
    rd = RunDir.create(cfg)
    try:
        loop = RoundLoop(cfg, rd, runtime=rt)
        real_collect = rt.collect

        def killed_in_round_1(specs, r, on_batch):
            if r == 1:
                def first_chunk_then_die(batch, seconds):
                    on_batch(batch, seconds)
                    raise KeyboardInterrupt("job killed")

                return real_collect(specs, r, first_chunk_then_die)
            return real_collect(specs, r, on_batch)

        rt.collect = killed_in_round_1
        with pytest.raises(KeyboardInterrupt):
            loop.run()
        # the collective push reached both generators: same weights as the learner
        sums = {g.call("weights_checksum") for g in rt.generators}
        assert sums == set(rt.learner.weights_checksums())
        assert rd.state()["last_completed_round"] == 0
    finally:
        rt.shutdown()
    # a new job resumes the run directory
    resumed = RunDir.open_for_resume(rd.path)
    cfg2 = resumed.load_config()
    rt2 = RayRuntime(cfg2)
    try:
        loop2 = RoundLoop(cfg2, resumed, runtime=rt2)
        # generators hold the restored weights before they draw anything
        assert rt2.generator_versions() == [1, 1]
        assert rt2.global_step() == cfg2.train.steps_per_round
        loop2.run()
    finally:
        rt2.shutdown()
    assert resumed.state() == {"last_completed_round": 1, "weights_version": 2, "global_step": 8}
    assert [x["weights_version"] for x in samples(resumed, 1)] == [1] * 8
    rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rows if x["kind"] == "round"] == [0, 1]
    assert [x["step"] for x in rows if x["kind"] == "step"] == list(range(1, 9))
    assert list((rd.path / "crashed").rglob("0001.partial")), "the killed round's files are kept"


def test_role_counts_zero_run_in_the_driver(cluster, tmp_path):
    """Every remote count at 0: the Ray runtime runs each role in the driver process, with
    the same results as the single-process loop; the timeline is written per round."""
    import os

    cfg = cfg_for(tmp_path, "runtime.generator.replicas=0", "runtime.grounder.max_replicas=0",
                  "runtime.grounder.min_replicas=0", "runtime.judge.max_replicas=0",
                  "runtime.judge.min_replicas=0", "runtime.learner.replicas=0",
                  "train.engine=torch", "run.rounds=1", "runtime.timeline=true")
    rt = RayRuntime(cfg)
    try:
        assert rt.generators[0].call("pid") == os.getpid()
        assert rt.judge.describe() == "in the driver" and rt.grounder.describe() == "in the driver"
        rd = RunDir.create(cfg)
        RoundLoop(cfg, rd, runtime=rt).run()
    finally:
        rt.shutdown()
    local_cfg = cfg_for(tmp_path / "local", "runtime.mode=local", "train.engine=torch", "run.rounds=1")
    local = RunDir.create(local_cfg)
    RoundLoop(local_cfg, local).run()
    a, b = samples(rd, 0), samples(local, 0)
    assert [x["global_score"] for x in a] == [x["global_score"] for x in b]
    assert [x["region_scores"] for x in a] == [x["region_scores"] for x in b]
    # no Ray task ran, so the round's trace is an empty chrome trace
    assert json.loads((rd.round_dir(0) / "timeline.json").read_text()) == []


def test_init_ray_tells_an_instance_it_started_from_one_already_there(tmp_path):
    # in a fresh interpreter: this module's cluster fixture holds Ray in the test process.
    # Joining a running cluster (own_instance False) is asserted end to end by the
    # `ray job submit` test (the job's Serve apps must not outlive it).
    code = (
        "import json, ray\n"
        "from srum_ray.runtime.ray_runtime import init_ray\n"
        "first = init_ray('local')\n"  # 'local': a new instance even if a `ray start` runs here
        "again = init_ray(None)\n"
        "print(json.dumps([first.__dict__, again.__dict__]))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, again = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == {"connected": True, "own_instance": True}
    assert again == {"connected": False, "own_instance": False}  # Ray already up in this process


def test_a_role_that_fails_to_come_up_leaves_nothing_deployed(cluster, tmp_path, monkeypatch):
    import actors.pools as pools
    from ray import serve

    real = pools.build_stage

    def judge_fails(role, cfg, **kw):
        if role == "judge":  # after the grounder's app is up
            raise RuntimeError("judge replica: model did not load")
        return real(role, cfg, **kw)

    monkeypatch.setattr(pools, "build_stage", judge_fails)
    cfg = cfg_for(tmp_path)
    with pytest.raises(RuntimeError, match="model did not load"):
        RayRuntime(cfg)
    # the grounder app it had deployed is gone, and the Serve it started with it
    apps = serve.status().applications if pools.serve_running() else {}
    assert not [a for a in apps if a.startswith(f"srum-{cfg.run.name}-")], apps
    assert not pools.serve_running()
    assert ray.is_initialized()  # the test's own connection is not the runtime's to close
