"""Roles as Ray actors: generators (actors), grounders and judges (autoscaling Serve
deployments), the learner group (DeepSpeed ranks), weight sync between them.

Streaming: each chunk of ``generation.batch_size`` specs is its own thread in the driver:
it waits for a free generator, then sends the generated chunk to the grounder pool and on
to the judge pool, so a chunk is judged while later chunks are still being drawn. Requests
to the pools carry images and records only (latents and conditioning stay in the driver
and are re-attached by sample id). A role whose remote count is 0 runs in the driver.

Stage seconds of a chunk: ``generate`` is the time a generator spent on it (not the wait
for a free one); ``propose`` / ``judge`` are the driver's request latencies (queueing and
Serve batching included), and ``propose_busy`` / ``judge_busy`` the time the pool replicas
report spending in their stages (a merged call counts once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import ray

from actors.generator import GeneratorWorker, role_options
from srum_ray.config.load import config_to_dict
from srum_ray.config.schema import SrumConfig
from srum_ray.data import SampleSpec
from srum_ray.runtime.base import OnBatch, Runtime
from srum_ray.runtime.stage_client import StageClient, images_only
from srum_ray.types import RolloutBatch

log = logging.getLogger("srum_ray")


@dataclass(frozen=True)
class RaySession:
    """What :func:`init_ray` did.

    ``connected``: this call ran ``ray.init``, so its caller disconnects with ``ray.shutdown()``.
    ``own_instance``: and that started a new local Ray instance, which ``ray.shutdown()`` stops
    with everything on it, Serve included. False when it joined a running cluster (an address,
    ``RAY_ADDRESS`` as under ``ray job submit``, or a ``ray start`` on this machine): there
    Serve and its apps outlive the driver, so a run deletes what it deployed.
    """

    connected: bool
    own_instance: bool


def init_ray(address: str | None) -> RaySession:
    """Join (or start) Ray; says whether this call connected and whether it started the instance."""
    if ray.is_initialized():
        return RaySession(connected=False, own_instance=False)
    ray.init(address=address, log_to_driver=True, configure_logging=False)
    # a driver that started its instance holds the head node; one that joined holds a
    # connect-only node (no public API tells the two apart)
    node = ray._private.worker._global_node
    return RaySession(connected=True, own_instance=bool(node is not None and node.is_head()))


def _merge(full: RolloutBatch, answered: RolloutBatch) -> RolloutBatch:
    """``full`` with its records replaced by ``answered``'s (joined by sample id)."""
    by_id = {r.id: r for r in answered.records}
    missing = [r.id for r in full.records if r.id not in by_id]
    if missing or len(by_id) != len(full.records):
        raise RuntimeError(f"a pool answered {len(by_id)} records for {len(full.records)}: missing {missing[:5]}")
    full.records = [by_id[r.id] for r in full.records]
    return full


def _add_busy(seconds: dict[str, float], key: str, busy: float | None) -> None:
    """Add a pool's reported busy time (``propose_busy`` / ``judge_busy``) to a chunk's seconds."""
    if busy is not None:
        seconds[key] = seconds.get(key, 0.0) + busy


class _LocalGenerator:
    """A generator in the driver, with the calling convention of an actor handle."""

    def __init__(self, cfg: dict) -> None:
        self.worker = GeneratorWorker(cfg)

    def call(self, name: str, *args: Any) -> Any:
        return getattr(self.worker, name)(*args)


class _RemoteGenerator:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def call(self, name: str, *args: Any) -> Any:
        return ray.get(getattr(self.handle, name).remote(*args))

    def submit(self, name: str, *args: Any) -> ray.ObjectRef:
        return getattr(self.handle, name).remote(*args)


class RayRuntime(Runtime):
    """Every role of a round as Ray workers (or in the driver where its count is 0)."""

    def __init__(self, cfg: SrumConfig) -> None:
        from actors.learner import LearnerGroup
        from actors.pools import build_stage

        self.cfg = cfg
        rt = cfg.runtime
        self._ray = init_ray(rt.address)
        cfg_dict = config_to_dict(cfg)
        t0 = time.perf_counter()
        if rt.generator.replicas == 0:
            self.generators: list[Any] = [_LocalGenerator(cfg_dict)]
        else:
            cls = ray.remote(GeneratorWorker)
            self.generators = [
                _RemoteGenerator(cls.options(**role_options(rt.generator, max_restarts=3)).remote(cfg_dict, i))
                for i in range(rt.generator.replicas)
            ]
        # Serve is stopped by whoever started it: a Serve running before this run (a demo's
        # session, a user's cluster) stays up, only this run's apps are deleted
        from actors.pools import serve_running

        self._serve_was_running = serve_running()
        # Serve apps are named per run so that two runs on one cluster do not collide
        self.serve_prefix = f"srum-{cfg.run.name}-{uuid.uuid4().hex[:6]}"
        self.grounder: StageClient | None = None
        self.judge: StageClient | None = None
        self.learner: Any = None
        try:
            self.grounder = build_stage("grounder", cfg, name_prefix=self.serve_prefix)
            self.judge = build_stage("judge", cfg, name_prefix=self.serve_prefix)
            self.learner = LearnerGroup(cfg)
            # every generator must be built before the first sync or generate
            for g in self.generators:
                g.call("weights_version")
        except BaseException:
            # a role that fails to come up (a model that does not load in a replica) must not
            # leave the roles already up behind: on a cluster, Serve apps outlive the driver
            self.shutdown()
            raise
        self.version = 0
        self.metrics: Any = None
        self._sync_ready = False
        self._queue_lock = threading.Lock()
        self._queued = {"generate": 0, "propose": 0, "judge": 0}
        log.info(
            "ray runtime up in %.1f s: %d generators, grounder %s, judge %s, learner x%d",
            time.perf_counter() - t0, len(self.generators), self.grounder.describe(),
            self.judge.describe(), self.learner.world_size,
        )

    # ---------------------------------------------------------------- streaming
    def _queue(self, stage: str, delta: int) -> None:
        with self._queue_lock:
            self._queued[stage] += delta
            n = self._queued[stage]
        if self.metrics is not None:
            self.metrics.set_queue_depth(stage, n)

    def _timed(self, stage: str, seconds: dict[str, float], fn: Callable[[], Any]) -> Any:
        self._queue(stage, +1)
        t = time.perf_counter()
        try:
            return fn()
        finally:
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - t
            self._queue(stage, -1)

    def _generate(self, free: "queue.Queue[Any]", chunk: list[SampleSpec], r: int,
                  seconds: dict[str, float]) -> RolloutBatch:
        """Draw ``chunk`` on the next free generator; ``seconds["generate"]`` gets the time
        from taking a generator to its answer (the generator's busy time, not the wait)."""
        self._queue("generate", +1)
        try:
            gen = free.get()
            t = time.perf_counter()
            try:
                batch = gen.call("generate", chunk, r)
                stale = {rec.weights_version for rec in batch.records} - {self.version}
                if stale:  # a restarted generator came back with its base weights: resync, redraw
                    log.warning("generator drew with weights %s, expected %d: resyncing it", stale, self.version)
                    self._push_object_store([gen], self.version)
                    batch = gen.call("generate", chunk, r)
                return batch
            finally:
                seconds["generate"] = seconds.get("generate", 0.0) + time.perf_counter() - t
                free.put(gen)
        finally:
            self._queue("generate", -1)

    def collect(self, specs: Sequence[SampleSpec], round_index: int, on_batch: OnBatch) -> None:
        size = self.cfg.generation.batch_size
        chunks = [list(specs[i : i + size]) for i in range(0, len(specs), size)]
        free: "queue.Queue[Any]" = queue.Queue()
        for g in self.generators:
            free.put(g)

        def run_chunk(chunk: list[SampleSpec]) -> tuple[RolloutBatch, dict[str, float]]:
            seconds: dict[str, float] = {}
            batch = self._generate(free, chunk, round_index, seconds)
            boxed = self._timed("propose", seconds, lambda: self.grounder.call(images_only(batch)))
            _add_busy(seconds, "propose_busy", self.grounder.last_busy_s())
            judged = self._timed("judge", seconds, lambda: self.judge.call(images_only(_merge(batch, boxed))))
            _add_busy(seconds, "judge_busy", self.judge.last_busy_s())
            return _merge(batch, judged), seconds

        workers = max(1, min(len(chunks), 4 * len(self.generators) + 4))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srum-chunk") as pool:
            futures = [pool.submit(run_chunk, c) for c in chunks]
            try:
                for f in as_completed(futures):
                    batch, seconds = f.result()
                    on_batch(batch, seconds)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # ---------------------------------------------------------------- learner
    def train(self, batch: RolloutBatch, step_indices: list[list[int]], lambda_c: float) -> list[dict[str, Any]]:
        return self.learner.train_round(_without_images(batch), step_indices, lambda_c)

    def save(self, directory: Path) -> None:
        self.learner.save(directory)

    def load(self, directory: Path) -> None:
        self.learner.load(directory)

    def global_step(self) -> int:
        return self.learner.global_step()

    # ---------------------------------------------------------------- weight sync
    def _push_object_store(self, gens: list[Any], version: int) -> int:
        ref = self.learner.state_dict_ref()
        remote = [g.submit("load_weights", ref, version) for g in gens if isinstance(g, _RemoteGenerator)]
        local = [g for g in gens if isinstance(g, _LocalGenerator)]
        got = ray.get(remote) + [g.call("load_weights", ray.get(ref), version) for g in local]
        if any(v != version for v in got):
            raise RuntimeError(f"weight sync: generators report versions {got}, expected {version}")
        return int(ray.get(self.learner.state_nbytes_ref(ref)))

    def _push_collective(self, version: int) -> int:
        remote = [g for g in self.generators if isinstance(g, _RemoteGenerator)]
        if len(remote) != len(self.generators):
            raise ValueError("runtime.weight_sync=collective needs remote generators (runtime.generator.replicas > 0)")
        if not self._sync_ready:
            host, port = self.learner.sync_address()
            world = len(remote) + 1
            joins = [g.submit("sync_join", host, port, i + 1, world, self.learner.sync_backend()) for i, g in enumerate(remote)]
            self.learner.sync_open(host, port, world)
            ray.get(joins)
            self._sync_ready = True
        receives = [g.submit("sync_receive", version) for g in remote]
        sent = self.learner.sync_send()
        ray.get(receives)
        return sent

    def sync(self, version: int) -> dict[str, float]:
        t = time.perf_counter()
        if self.cfg.runtime.weight_sync == "collective":
            nbytes = self._push_collective(version)
        else:
            nbytes = self._push_object_store(self.generators, version)
        self.version = version
        seconds = time.perf_counter() - t
        return {"sync_s": seconds, "bytes": nbytes, "gb_per_s": nbytes / seconds / 1e9 if seconds > 0 else 0.0}

    # ---------------------------------------------------------------- status
    def generator_versions(self) -> list[int]:
        return [int(g.call("weights_version")) for g in self.generators]

    def replicas(self) -> dict[str, int]:
        return {
            "generator": len(self.generators),
            "grounder": self.grounder.num_replicas(),
            "judge": self.judge.num_replicas(),
            "learner": self.learner.world_size,
        }

    def timeline(self, path: Path, since: float | None = None) -> bool:
        """Ray's chrome trace of the cluster's tasks, from ``since`` (epoch seconds) on."""
        import json

        events = ray.timeline()
        if since is not None:
            events = [e for e in events if float(e.get("ts", 0)) >= since * 1e6]
        Path(path).write_text(json.dumps(events))
        return True

    def shutdown(self) -> None:
        from actors.pools import shutdown_pools

        # one call removes both pool apps (or stops Serve when this run started it and they are
        # all it runs); closing each stage first would delete the apps one after the other. A
        # Ray instance this runtime started goes down whole with ray.shutdown(), Serve with it;
        # on a cluster it joined, Serve apps outlive the driver and must be deleted.
        # (a runtime whose start-up failed closes the roles it has: the others are None)
        closers: list[Callable[[], None]] = [self.learner.shutdown] if self.learner is not None else []
        if not self._ray.own_instance:
            closers.append(lambda: shutdown_pools(self.serve_prefix, stop_serve=not self._serve_was_running))
        closers += [stage.release for stage in (self.grounder, self.judge) if stage is not None]
        for closer in closers:
            try:
                closer()
            except Exception as e:  # noqa: BLE001 - report, keep closing the rest
                log.warning("shutdown: %s", e)
        for g in self.generators:
            if isinstance(g, _RemoteGenerator):
                ray.kill(g.handle)
        if self._ray.connected:
            ray.shutdown()
            # Serve's handle threads may still call Ray: they must not start a new session
            # (RAY_ENABLE_AUTO_CONNECT is read once, at import, into this flag)
            from ray._private import auto_init_hook

            auto_init_hook.enable_auto_connect = False


def _without_images(batch: RolloutBatch) -> RolloutBatch:
    """What the learner needs: tensors and records (images stay in the driver)."""
    return RolloutBatch(records=batch.records, latents=batch.latents, cond=batch.cond, weights=batch.weights)
