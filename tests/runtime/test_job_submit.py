"""Cluster specs (runtime_env, cluster launcher, KubeRay) and a real `ray job submit` round
trip to a local head on 127.0.0.1: SUCCEEDED, the run directory, the upload, the metrics."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from srum_ray.config.load import load_config
from srum_ray.runtime.metrics import scrape

ROOT = Path(__file__).resolve().parents[2]
#: the config the submitted job runs (runtime.mode decides whether metrics are expected);
#: SRUM_TEST_JOB_CONFIG=configs/tiny.yaml submits the single-process loop instead
CONFIG = os.environ.get("SRUM_TEST_JOB_CONFIG", "configs/ray_tiny.yaml")
#: custom node resource per worker node type; grounders share the judges' nodes
ROLE_NODES = {"generator": "generator_node", "judge": "judge_node", "learner": "learner_node"}
PIN = {"generator": "generator_node", "grounder": "judge_node", "judge": "judge_node",
       "learner": "learner_node"}


def _load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ specs
def test_runtime_env_is_valid_and_excludes_local_state():
    from ray.runtime_env import RuntimeEnv

    env = _load("cluster/runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert "pip" not in env and "conda" not in env  # the image's environment is used


def _launcher_nodes(spec: dict) -> dict[str, tuple[dict, int, int]]:
    return {
        name: (t.get("resources", {}), t.get("min_workers", 0), t.get("max_workers", 0))
        for name, t in spec["available_node_types"].items()
    }


def _kuberay_nodes(cluster_spec: dict) -> dict[str, tuple[dict, int, int]]:
    out = {}
    for g in cluster_spec["workerGroupSpecs"]:
        # KubeRay's format: a YAML string holding a JSON string holding the mapping
        raw = g["rayStartParams"].get("resources")
        res = json.loads(json.loads(raw)) if raw else {}
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        out[g["groupName"]] = (res, g["minReplicas"], g["maxReplicas"])
    head = cluster_spec["headGroupSpec"]["rayStartParams"]
    assert "resources" not in head  # no role lands on the head
    return out


def _check_role_groups(nodes: dict[str, tuple[dict, int, int]], where: str) -> None:
    for role, res in ROLE_NODES.items():
        holders = [n for n, (r, _, _) in nodes.items() if res in r]
        assert len(holders) == 1, f"{where}: {res} on {holders}, expected one node type"
        r, lo, hi = nodes[holders[0]]
        assert r[res] >= 1 and 0 <= lo <= hi and hi >= 1, f"{where}: {holders[0]}"


def test_cluster_launcher_spec_validates_with_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    spec = _load("cluster/cluster.yaml")
    validate_config(prepare_config(spec))  # Ray's schema + head/worker bounds
    nodes = _launcher_nodes(spec)
    assert nodes[spec["head_node_type"]][0] == {}
    _check_role_groups(nodes, "cluster.yaml")
    assert sum(hi for _, _, hi in nodes.values()) <= spec["max_workers"]
    starts = " ".join(spec["head_start_ray_commands"] + spec["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert starts.count("--metrics-export-port=8080") == 2


def test_kuberay_cluster_and_job_match():
    import ray

    rc, rj = _load("cluster/kuberay/raycluster.yaml"), _load("cluster/kuberay/rayjob.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rj["apiVersion"], rj["kind"]) == ("ray.io/v1", "RayJob")
    job_cluster = rj["spec"]["rayClusterSpec"]
    for spec, where in ((rc["spec"], "raycluster"), (job_cluster, "rayjob")):
        assert spec["rayVersion"] == ray.__version__
        assert spec["authOptions"]["mode"] == "token"
        assert spec["enableInTreeAutoscaling"] is True
        _check_role_groups(_kuberay_nodes(spec), where)
    assert _kuberay_nodes(rc["spec"]) == _kuberay_nodes(job_cluster)
    entry = rj["spec"]["entrypoint"].split()
    assert entry[:4] == ["python", "-m", "srum_ray.train", "--config"]
    assert (ROOT / entry[4]).is_file()
    load_config(ROOT / entry[4], entry[5:])  # the entrypoint's overrides validate
    env = yaml.safe_load(rj["spec"]["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_role_pins_validate_and_fit_the_node_types():
    """The resources a config asks for to pin each role exist on exactly its node type."""
    overrides = [f"runtime.{role}.resources={{{res}: 0.01}}" for role, res in PIN.items()]
    cfg = load_config(ROOT / CONFIG, overrides)
    launcher = _launcher_nodes(_load("cluster/cluster.yaml"))
    kuberay = _kuberay_nodes(_load("cluster/kuberay/raycluster.yaml")["spec"])
    for role, res in PIN.items():
        rc = getattr(cfg.runtime, role)
        assert rc.resources == {res: 0.01}
        most = rc.replicas if hasattr(rc, "replicas") else rc.max_replicas
        for nodes in (launcher, kuberay):
            cap = sum(r.get(res, 0) * hi for r, _, hi in nodes.values())
            assert most * 0.01 <= cap, (role, res)


# ------------------------------------------------------------------- local head + job
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _stop_procs(procs: list) -> None:
    """SIGTERM, 10 s grace, then SIGKILL (psutil checks each pid is still the same process)."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _our_processes(pgid: int | None, marker: str) -> list:
    """Processes in process group ``pgid`` (None: skip that test) or naming ``marker`` (our
    temp dir) on their command line."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if (pgid is not None and os.getpgid(p.pid) == pgid) or marker in " ".join(
                p.info["cmdline"] or []
            ):
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


class LocalHead:
    """A `ray start --head --block` process on 127.0.0.1 in its own temp dir and ports."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="srum-ray-", dir="/tmp")  # short: unix sockets
        gcs, dash, metrics, agent, agent_grpc, env_agent, client, dash_metrics = _free_ports(8)
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.metrics = f"http://127.0.0.1:{metrics}/metrics"
        ray_cli = Path(sys.executable).with_name("ray")
        self.ray = str(ray_cli) if ray_cli.exists() else (shutil.which("ray") or "ray")
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(
            # a local head bound to 127.0.0.1: Ray 2.60's token auth is turned off on purpose
            RAY_AUTH_MODE="disabled",
            # metrics reach the endpoint within ~1 s instead of Ray's default 10 s
            RAY_metrics_report_interval_ms="1000",
            # on SIGTERM a node drains (Serve replicas) for up to 30 s by default: stop at once
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            DASHBOARD_METRIC_PORT=str(dash_metrics),
            # the job's `python` is the first on the head's PATH: this test's interpreter
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.log = open(Path(self.tmp) / "head.log", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--dashboard-host", "127.0.0.1", "--port", str(gcs), "--dashboard-port", str(dash),
             "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port",
             str(env_agent), "--ray-client-server-port", str(client), "--num-cpus", "2",
             "--temp-dir", self.tmp, "--disable-usage-stats"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = t0 + 90
        while True:
            try:  # the metrics endpoint is the node agent's, which job submission needs too
                _get(f"{self.dashboard}/api/version")
                _get(self.metrics)
                break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ray head did not come up:\n{self.log_tail()}")
            time.sleep(0.25)
        self.start_s = time.monotonic() - t0

    def log_tail(self, n: int = 30) -> str:
        self.log.flush()
        lines = (Path(self.tmp) / "head.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """SIGTERM to `ray start --block` stops its cluster (never `ray stop`, which would stop
        every Ray on the machine); stragglers of our process group or temp dir follow."""
        # snapshot while the head lives: its process group (start_new_session) is ours alone
        ours = _our_processes(self.proc.pid if self.proc.poll() is None else None, self.tmp)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _stop_procs([p for p in ours if p.is_running()] + _our_processes(None, self.tmp))
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _serve_state(head: LocalHead) -> dict:
    # the dashboard asks the Serve controller: slow while a job's Serve is starting
    return json.loads(_get(f"{head.dashboard}/api/serve/applications/", timeout=30))


def _assert_no_serve_left(head: LocalHead, wait_s: float = 20.0) -> None:
    """No Serve app and no Serve controller on the cluster (within ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    state = _serve_state(head)
    while (state["applications"] or state["controller_info"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = _serve_state(head)
    assert state["applications"] == {} and state["controller_info"] == {}, (
        f"Serve left on the cluster after the job: apps {sorted(state['applications'])}, "
        f"controller {state['controller_info']}")


@pytest.fixture(scope="module")
def local_head():
    head = LocalHead()
    try:
        yield head
    finally:
        head.stop()


@pytest.mark.slow
def test_ray_job_submit_two_rounds(local_head, tmp_path):
    head = local_head
    cfg = load_config(ROOT / CONFIG)
    out = tmp_path / "runs"
    sid = f"srum-test-{uuid.uuid4().hex[:8]}"
    cmd = [
        head.ray, "job", "submit", "--address", head.dashboard, "--submission-id", sid,
        "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", str(ROOT), "--",
        "python", "-m", "srum_ray.train", "--config", CONFIG, "run.rounds=2",
        f"run.output_dir={out}", "run.progress=false",
    ]
    t0 = time.monotonic()
    log_path = tmp_path / "submit.log"  # a file, not a pipe: a long job log cannot block it
    with open(log_path, "w") as log:
        cli = subprocess.Popen(cmd, cwd=ROOT, env=head.env, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[tuple[str, str], float] = {}  # (metric, run tag) -> largest value scraped
    deadline = t0 + 240
    while cli.poll() is None:
        if time.monotonic() > deadline:
            cli.kill()
            subprocess.run([head.ray, "job", "stop", "--address", head.dashboard, sid],
                           env=head.env, capture_output=True, timeout=30)
            pytest.fail(f"job {sid} still running after 240 s:\n{log_path.read_text()[-4000:]}")
        try:  # gauges of the driver vanish ~2 s after it exits: watch while it runs
            for s in scrape(head.metrics):
                key = (s.name, s.labels.get("run", ""))
                seen[key] = max(seen.get(key, s.value), s.value)
        except OSError:
            pass
        time.sleep(0.5)
    output = log_path.read_text(errors="replace")
    wall = time.monotonic() - t0
    assert cli.returncode == 0, f"ray job submit failed:\n{output[-4000:]}"
    status = json.loads(_get(f"{head.dashboard}/api/jobs/{sid}"))["status"]
    assert status == "SUCCEEDED", output[-4000:]

    # the job's Serve apps (grounder and judge pools) do not outlive it on the cluster: the run
    # deletes them and stops the Serve it started (ray.shutdown() only disconnects a job's driver)
    _assert_no_serve_left(head)

    # the run directory: two committed rounds, every sample drawn by the weights of its round
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    state = json.loads((run / "state.json").read_text())
    assert state["last_completed_round"] == 1 and state["weights_version"] == 2
    per_round = cfg.data.prompts_per_round * cfg.data.images_per_prompt
    ids = set()
    for r in (0, 1):
        lines = (run / "rounds" / f"{r:04d}" / "samples.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == per_round
        assert {rec["weights_version"] for rec in recs} == {r}
        ids |= {rec["id"] for rec in recs}
    assert len(ids) == 2 * per_round

    # the upload: code and configs, none of .git / .venv / runs, small
    pkgs = [p for p in (Path(head.tmp) / "session_latest" / "runtime_resources"
                        / "working_dir_files").glob("_ray_pkg_*") if p.is_dir()]
    assert len(pkgs) == 1, pkgs
    pkg = pkgs[0]
    assert (pkg / "srum_ray" / "train.py").is_file() and (pkg / CONFIG).is_file()
    assert not any((pkg / d).exists() for d in (".git", ".venv", "runs"))
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    # the code, configs and the shipped shapes-world weights (14 MB), nothing else
    assert size < 20 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"

    srum = {k: v for k, v in seen.items() if k[1] == run.name}
    if cfg.runtime.mode == "ray":
        names = {name for name, _ in srum}
        want = {"ray_srum_round", "ray_srum_samples_total", "ray_srum_stage_seconds_count"}
        assert want <= names, f"srum metrics missing at {head.metrics}: {want - names}"
        assert srum[("ray_srum_samples_total", run.name)] >= per_round
    print(
        f"\nray job submit round trip: head up in {head.start_s:.1f} s, job {wall:.1f} s "
        f"(config {CONFIG}, mode {cfg.runtime.mode}), upload {size / 2**10:.0f} KiB, "
        f"srum series seen: {len(srum)}"
    )
    print("\n".join(x for x in output.splitlines() if "runtime up" in x or " done in " in x))


@pytest.mark.slow
def test_ray_job_stop_leaves_no_serve_pools(local_head, tmp_path):
    """`ray job stop` sends the driver SIGTERM (then SIGKILL 3 s later): Ray's driver handler
    turns it into SystemExit, so the run's shutdown deletes its pools and the Serve it started."""
    head = local_head
    sid = f"srum-test-{uuid.uuid4().hex[:8]}"
    submit = [
        head.ray, "job", "submit", "--no-wait", "--address", head.dashboard, "--submission-id", sid,
        "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", str(ROOT), "--",
        "python", "-m", "srum_ray.train", "--config", "configs/ray_tiny.yaml", "run.rounds=1000",
        f"run.output_dir={tmp_path / 'runs'}", "run.progress=false",
    ]
    subprocess.run(submit, cwd=ROOT, env=head.env, check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 180
    while not any(a.startswith("srum-") for a in _serve_state(head)["applications"]):
        if time.monotonic() > deadline:
            logs = subprocess.run([head.ray, "job", "logs", "--address", head.dashboard, sid], env=head.env,
                                  capture_output=True, text=True, timeout=30).stdout
            subprocess.run([head.ray, "job", "stop", "--address", head.dashboard, sid], env=head.env,
                           capture_output=True, timeout=60)
            pytest.fail(f"job {sid} deployed no pool within 180 s:\n{logs[-4000:]}")
        time.sleep(0.5)
    stop = subprocess.run([head.ray, "job", "stop", "--address", head.dashboard, sid], env=head.env,
                          capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert json.loads(_get(f"{head.dashboard}/api/jobs/{sid}"))["status"] == "STOPPED"
    _assert_no_serve_left(head)
