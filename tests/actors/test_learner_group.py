"""The learner group: in the driver (no Ray) and as DeepSpeed ranks on a local Ray (gloo)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

import deepspeed  # noqa: E402,F401 - required by the dev extras: a missing install fails
import ray  # noqa: E402

from actors.learner import LearnerGroup, LearnerWorker, rank_rows  # noqa: E402
from srum_ray.runtime.sync import state_checksum as _checksum  # noqa: E402
from srum_ray.config.load import load_config  # noqa: E402
from srum_ray.learner.engine import TorchEngine  # noqa: E402
from srum_ray.models.tiny import TinyGenerator  # noqa: E402
from srum_ray.runtime.sync import SyncGroup  # noqa: E402
from srum_ray.types import RolloutBatch, SampleRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE = ["run.cpu_threads=1", "train.lr=1e-3", "train.warmup_steps=2", "train.grad_clip=0.5",
        "runtime.learner.num_cpus=0.25"]
#: global rows of three optimizer steps; the last has 3 rows (padded to 4 over 2 ranks)
STEPS = [[0, 1, 2, 3], [2, 3, 4, 5], [5, 0, 1]]


def make_cfg(*extra):
    return load_config(ROOT / "configs" / "tiny.yaml", BASE + list(extra))


@pytest.fixture(scope="module")
def ray_up():
    t = time.perf_counter()
    ray.init(num_cpus=2, resources={"learner_node": 1.0}, include_dashboard=False,
             log_to_driver=False)
    print(f"\n[timing] ray.init {time.perf_counter() - t:.1f} s")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch():
    """Six generated samples of the tiny generator, weights one."""
    cfg = make_cfg()
    torch.set_num_threads(1)
    gen = TinyGenerator(cfg.model.tiny, cfg.generation)
    n = 6
    out = gen.generate([f"a red circle {i}" for i in range(n)], list(range(n)))
    recs = [SampleRecord(id=str(i), round=0, prompt="p", seed=i, weights_version=0) for i in range(n)]
    h, w = out.latents.shape[-2:]
    return RolloutBatch(recs, out.latents, out.cond, torch.ones(n, 1, h, w), images=out.images)


@pytest.fixture(scope="module")
def reference(batch):
    """``reference(world)``: the torch engine in this process on the same global rows,
    padded as ``world`` ranks pad them (the third step: [5, 0, 1] or [5, 0, 1, 5])."""
    cache = {}

    def run(world: int) -> dict:
        if world not in cache:
            cfg = make_cfg()
            gen = TinyGenerator(cfg.model.tiny, cfg.generation)
            initial = _checksum(gen.trainable_module().state_dict())
            eng = TorchEngine(gen, cfg.train, seed=cfg.run.seed)
            padded = [sum((rank_rows(r, k, world) for k in range(world)), []) for r in STEPS]
            metrics = [eng.train_batch(batch.select(rows), 0.5) for rows in padded]
            state = {k: v.clone() for k, v in gen.trainable_module().state_dict().items()}
            cache[world] = {"initial": initial, "metrics": metrics, "state": state}
        return cache[world]

    return run


def assert_close_to_reference(metrics, state, reference):
    for got, want in zip(metrics, reference["metrics"]):
        assert all(math.isfinite(got[k]) for k in ("loss", "reward_term", "ref_term", "grad_norm"))
        assert got["step"] == want["step"] and got["lr"] == pytest.approx(want["lr"])
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3)
    for k, v in reference["state"].items():
        torch.testing.assert_close(state[k], v, rtol=1e-3, atol=1e-5)


def test_rank_rows_pads_cyclically_and_splits_contiguously():
    assert rank_rows([7, 8, 9], 0, 2) == [7, 8]
    assert rank_rows([7, 8, 9], 1, 2) == [9, 7]
    assert rank_rows([0, 1, 2, 3, 4, 5, 6, 7], 1, 2, 2) == [4, 5, 6, 7]
    assert rank_rows([4], 1, 2, 2) == [4, 4]
    assert rank_rows([1, 2, 3], 0, 1, 1) == [1, 2, 3]
    with pytest.raises(ValueError, match="at least one row"):
        rank_rows([], 0, 1)
    with pytest.raises(ValueError, match="outside a world"):
        rank_rows([1], 2, 2)


def test_config_errors_come_before_any_actor():
    with pytest.raises(ValueError, match="train.engine=deepspeed"):
        LearnerGroup(make_cfg("runtime.learner.replicas=2", "train.engine=torch"))
    with pytest.raises(ValueError, match="runtime.learner.replicas"):
        LearnerGroup(make_cfg("runtime.learner.replicas=3", "train.engine=deepspeed"))
    with pytest.raises(ValueError, match="master_addr"):
        LearnerWorker(make_cfg("train.engine=deepspeed"), rank=1, world_size=2)


def test_local_group_runs_in_this_process(batch, reference):
    reference = reference(1)
    group = LearnerGroup(make_cfg("runtime.learner.replicas=0"))
    assert group.world_size == 1 and group.workers == []
    metrics = group.train_round(batch, STEPS, 0.5)
    assert [m["loss"] for m in metrics] == [m["loss"] for m in reference["metrics"]]
    state = group.state_dict_for_sync()
    assert all(torch.equal(state[k], v) for k, v in reference["state"].items())
    assert group.global_step() == 3 and group.node_ids() == [None]
    group.shutdown()


def test_one_rank_zero3_actor(ray_up, batch, reference):
    reference = reference(1)
    cfg = make_cfg("runtime.learner.replicas=1", "train.engine=deepspeed", "train.zero_stage=3")
    group = LearnerGroup(cfg)
    try:
        assert group.node_ids() == [ray.get_runtime_context().get_node_id()]
        metrics = group.train_round(batch, STEPS, 0.5)
        ref = group.state_dict_ref()
        assert isinstance(ref, ray.ObjectRef)
        state = ray.get(ref)
        assert ray.get(group.state_nbytes_ref(ref)) == sum(
            t.numel() * t.element_size() for t in state.values())
        assert_close_to_reference(metrics, state, reference)
        assert group.weights_checksums() == [_checksum(state)] != [reference["initial"]]
    finally:
        group.shutdown()


def test_two_ranks_zero2_agree_resume_and_broadcast(ray_up, batch, reference, tmp_path):
    reference = reference(2)
    cfg = make_cfg("runtime.learner.replicas=2", "train.engine=deepspeed", "train.zero_stage=2",
                   'runtime.learner.resources={"learner_node": 0.5}')
    group = LearnerGroup(cfg)
    try:
        # both ranks hold their declared custom resource
        assert ray.available_resources().get("learner_node", 0.0) == pytest.approx(0.0)
        assert len(set(group.node_ids())) == 1
        metrics = group.train_round(batch, STEPS, 0.5)
        sums = group.weights_checksums()
        assert sums[0] == sums[1] != reference["initial"]
        state = group.state_dict_for_sync()
        assert _checksum(state) == sums[0]
        assert_close_to_reference(metrics, state, reference)

        group.save(tmp_path / "ck")
        assert (tmp_path / "ck" / "trainable.safetensors").is_file()
        more = group.train_round(batch, STEPS[:1], 0.5)
        assert more[0]["step"] == 4 and group.weights_checksums()[0] != sums[0]
        group.load(tmp_path / "ck")
        assert group.global_step() == 3 and group.weights_checksums() == sums

        # collective weight sync: rank 0 broadcasts to a receiver in this process
        host, port = group.sync_address()
        assert group.sync_backend() == "gloo"
        into = {k: torch.zeros_like(v) for k, v in state.items()}
        sent = {}
        opener = threading.Thread(target=lambda: group.sync_open(host, port, 2))
        opener.start()
        receiver = SyncGroup(host, port, 1, 2, "gloo")
        opener.join()
        sender = threading.Thread(target=lambda: sent.setdefault("n", group.sync_send()))
        sender.start()
        got = receiver.receive(into)
        sender.join()
        assert sent["n"] == got == sum(t.numel() * 4 for t in state.values())
        assert _checksum(into) == sums[0]
    finally:
        group.shutdown()


def test_a_rank_that_fails_setup_raises_and_stops_the_group(ray_up, tmp_path):
    cfg = make_cfg("runtime.learner.replicas=1", "train.engine=deepspeed")
    cfg.model.checkpoint = str(tmp_path / "missing")
    with pytest.raises(ray.exceptions.RayTaskError, match="checkpoint directory not found"):
        LearnerGroup(cfg)
