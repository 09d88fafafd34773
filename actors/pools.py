"""Judge and grounder pools: autoscaling, batching Ray Serve deployments.

:class:`JudgeReplica` (relevance filter + judge) and :class:`GrounderReplica` (region
proposals) are plain classes around the library's stage functions; a test or the driver
builds them in-process and calls :meth:`~_StageReplica.process`. :func:`deploy_pools` wraps
them as Serve deployments with ``serve.deployment(cls).options(...)``: replicas, CPUs, GPUs,
custom resources, autoscaling bounds and batching all come from ``cfg.runtime.judge`` /
``cfg.runtime.grounder`` (:class:`~srum_ray.config.schema.PoolConfig`), nothing is fixed on
the classes. :func:`build_stage` gives the controller a
:class:`~srum_ray.runtime.stage_client.StageClient` for a role: in the driver when the
pool's ``max_replicas`` is 0, else behind Serve.

Why Ray Serve and not Ray Data's ``ActorPoolStrategy`` (checked against Ray 2.60's source):

* **Replicas persist across rounds.** A Serve replica lives until the application is
  deleted or scaled down, so the frozen understanding model is loaded once per replica for
  the whole run. A Ray Data actor pool belongs to one dataset execution:
  ``ActorPoolMapOperator`` shuts its pool down (``_ActorPool.shutdown`` kills every actor)
  when the operator finishes, so each round's ``map_batches`` would rebuild the models.
* **Request-level autoscaling with bounds.** ``autoscaling_config`` keeps the in-flight
  requests per replica near ``target_ongoing_requests`` between ``min_replicas`` and
  ``max_replicas``, with ``upscale_delay_s`` / ``downscale_delay_s``; the controller streams
  chunks as they are generated, which is request traffic, not a dataset.
* **Built-in request batching.** ``@serve.batch`` merges concurrent requests that reach a
  replica (up to ``max_batch_size``, waiting at most ``batch_wait_timeout_s``) into one
  filter+judge call, so small chunks from several generators share model calls.
* **Self-healing.** The Serve controller replaces a replica that dies (its deployment goes
  back to the target count), noticing the death at its next health check
  (``health_check_period_s``, 10 s by default; measured: about 12 s to a replacement with the
  default, 4-5 s with 1 s). Serve re-routes only requests that no replica had accepted; one
  that the dead replica had accepted fails with ``ActorDiedError`` at the handle, and
  :class:`~srum_ray.runtime.stage_client.ServeStage` re-sends it, bounded by
  ``runtime.stage_retries``.

The pools run without an HTTP proxy (``serve.start(proxy_location="Disabled")``, apps
deployed with ``route_prefix=None``): the driver talks to them through deployment handles
only, so no port is opened.

How requests are merged does not change a sample's verdict: first attempts are greedy and
the judge derives retry seeds from record ids, not positions. This holds exactly for the tiny
models (tested); with padded batched inference on real models in low precision, answers can
differ in the last bits between batch compositions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import ray
import torch
from ray import serve

from actors.generator import worker_device
from srum_ray.config.load import config_from_dict, config_to_dict
from srum_ray.config.schema import PoolConfig, SrumConfig
from srum_ray.runtime.local import DTYPES, ModelLoadError
from srum_ray.runtime.stage_client import LocalStage, ServeStage, StageClient, StageReply
from srum_ray.stages import filter_stage, judge_stage, propose_stage
from srum_ray.types import RolloutBatch

log = logging.getLogger("srum_ray")

#: the pool roles, and the ``cfg.runtime`` section of each
ROLES = ("grounder", "judge")
#: optional keys taken from PoolConfig when the schema has them (else Serve's defaults: a
#: 30 s look-back, metrics pushed every 10 s, a health check every 10 s, which is also how
#: long a dead replica can go unnoticed by the controller before it is replaced)
_OPTIONAL_AUTOSCALING_KEYS = ("look_back_period_s", "metrics_interval_s", "downscale_to_zero_delay_s")
_OPTIONAL_DEPLOYMENT_KEYS = ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s")


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _as_config(cfg: SrumConfig | Mapping[str, Any]) -> SrumConfig:
    return cfg if isinstance(cfg, SrumConfig) else config_from_dict(dict(cfg))


def _build_understanding(cfg: SrumConfig, device: str) -> Any:
    from srum_ray.models.registry import build_model

    try:
        model = build_model(
            cfg.model, cfg.generation, device=device, dtype=DTYPES[cfg.run.dtype], parts=("understanding",)
        )
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:
        raise ModelLoadError(f"{type(e).__name__}: {e}".splitlines()[0]) from e
    return model.understanding


def _batched_entry() -> Any:
    """A fresh ``@serve.batch`` method (one batch queue per class that uses it).

    The batch size and wait set here are placeholders: each replica sets its pool's values
    in ``__init__`` (``set_max_batch_size`` / ``set_batch_wait_timeout_s``).
    """

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self: "_StageReplica", batches: list[RolloutBatch]) -> list[StageReply]:
        # the model runs in a worker thread so the replica's event loop keeps taking requests
        # (they queue up for the next merged call) and answering health checks
        return await asyncio.to_thread(self._run, list(batches))

    return _batched


class _StageReplica:
    """Shared shape of a pool replica: counters, batching, one merged call at a time."""

    role = ""
    _batched: Any = None

    def __init__(self, cfg: SrumConfig | Mapping[str, Any]) -> None:
        self.cfg = _as_config(cfg)
        pool: PoolConfig = getattr(self.cfg.runtime, self.role)
        if self.cfg.run.cpu_threads:
            torch.set_num_threads(self.cfg.run.cpu_threads)
        self.device = worker_device(self.cfg.run.device)
        self._model_lock = threading.Lock()  # one stage call at a time on the model
        self._count_lock = threading.Lock()  # counters, readable while a call runs
        self._requests = 0
        self._batches = 0
        self._samples = 0
        self._replica_id: str | None = None
        self._batched.set_max_batch_size(pool.max_batch_size)
        self._batched.set_batch_wait_timeout_s(pool.batch_wait_timeout_s)
        t0 = time.perf_counter()
        self._build()
        self.build_s = time.perf_counter() - t0
        log.info("%s replica built on %s in %.1f s", self.role, self.device, self.build_s)

    # ------------------------------------------------------------ subclass hooks
    def _build(self) -> None:
        raise NotImplementedError

    def _apply(self, batch: RolloutBatch) -> dict[str, int]:
        """Run this role's stages on ``batch`` in place; the call's counters."""
        raise NotImplementedError

    def _totals(self) -> dict[str, int]:
        return {}

    # ------------------------------------------------------------ entry points
    def replica_id(self) -> str:
        """Serve: the replica's actor name ``SERVE_REPLICA::app#deployment#id``; else ``local:<pid>``."""
        if self._replica_id is None:
            try:
                self._replica_id = serve.get_replica_context().replica_id.to_full_id_str()
            except Exception:  # noqa: BLE001 - not inside a Serve replica
                self._replica_id = f"local:{os.getpid()}"
        return self._replica_id

    def stats(self) -> dict[str, Any]:
        """This replica's counters since it started (requests, merged calls, samples, stage totals)."""
        with self._count_lock:
            return {
                "role": self.role,
                "replica": self.replica_id(),
                "node_id": _node_id(),
                "requests": self._requests,
                "batches": self._batches,
                "samples": self._samples,
                "build_s": round(self.build_s, 3),
                **self._totals(),
            }

    def process(self, batch: RolloutBatch) -> StageReply:
        """Serve one request now, without batching (the driver-local path)."""
        self._check(batch)
        return self._run([batch])[0]

    async def __call__(self, batch: RolloutBatch) -> StageReply:
        """Serve entry: the request joins the replica's next merged call."""
        self._check(batch)
        if len(batch) == 0:
            return StageReply(batch=batch, replica=self.replica_id(), batch_seq=0, batch_requests=0)
        return await self._batched(batch)

    # ------------------------------------------------------------ internals
    def _check(self, batch: Any) -> None:
        if not isinstance(batch, RolloutBatch):
            raise TypeError(f"{self.role} request must be a RolloutBatch, got {type(batch).__name__}")
        if len(batch) and not batch.images:
            raise ValueError(
                f"{self.role} request has {len(batch)} records but no images; send the images "
                "with the records (latents and cond may be dropped)"
            )

    def _run(self, batches: list[RolloutBatch]) -> list[StageReply]:
        """One merged call over ``batches``; every request's records are filled in place."""
        # concat over record/image views: the records are shared, so filling the merged
        # batch fills each request's batch, whatever tensors the requests carried
        merged = RolloutBatch.concat([RolloutBatch(records=b.records, images=b.images) for b in batches])
        with self._model_lock:
            t = time.perf_counter()
            counters = self._apply(merged) if len(merged) else {}
            busy = time.perf_counter() - t
        with self._count_lock:
            self._batches += 1
            self._requests += len(batches)
            self._samples += len(merged)
            seq = self._batches
        zeros = {k: 0 for k in counters}
        rid = self.replica_id()
        return [
            StageReply(b, rid, seq, len(batches), dict(counters) if i == 0 else dict(zeros),
                       busy if i == 0 else 0.0)
            for i, b in enumerate(batches)
        ]


class JudgeReplica(_StageReplica):
    """Relevance filter + judge on one understanding model (``filter_stage``, ``judge_stage``).

    Args:
        cfg: the full config (a :class:`SrumConfig` or its dict form); ``cfg.runtime.judge``
            sets the batching.
    """

    role = "judge"
    _batched = _batched_entry()

    def _build(self) -> None:
        from srum_ray.judging.filter import BoxFilter
        from srum_ray.judging.judge import Judge

        understanding = _build_understanding(self.cfg, self.device)
        self.box_filter = BoxFilter(understanding, self.cfg.filter, batch_size=self.cfg.judge.batch_size)
        self.judge = Judge(understanding, self.cfg.judge, seed=self.cfg.run.seed)

    def _apply(self, batch: RolloutBatch) -> dict[str, int]:
        filter_stage(self.box_filter, batch)
        judge_stage(self.judge, batch)
        return {**self.box_filter.stats.as_dict("filter_"), **self.judge.stats.as_dict("judge_")}

    def _totals(self) -> dict[str, int]:
        return {**self.box_filter.total.as_dict("filter_"), **self.judge.total.as_dict("judge_")}


class GrounderReplica(_StageReplica):
    """Region proposals (``propose_stage``) with the configured grounder.

    The understanding model is built only for ``grounder.kind: model``.
    """

    role = "grounder"
    _batched = _batched_entry()

    def _build(self) -> None:
        from srum_ray.grounding import build_grounder

        understanding = _build_understanding(self.cfg, self.device) if self.cfg.grounder.kind == "model" else None
        try:
            self.grounder = build_grounder(self.cfg.grounder, understanding=understanding, device=self.device)
        except (FileNotFoundError, ValueError, OSError, ImportError) as e:
            raise ModelLoadError(f"{type(e).__name__}: {e}".splitlines()[0]) from e
        self._boxes = 0

    def _apply(self, batch: RolloutBatch) -> dict[str, int]:
        propose_stage(self.grounder, batch)
        boxes = sum(len(r.boxes) for r in batch.records)
        self._boxes += boxes
        return {"grounder_images": len(batch), "grounder_boxes": boxes}

    def _totals(self) -> dict[str, int]:
        return {"grounder_boxes": self._boxes}


REPLICA_CLASSES: dict[str, type[_StageReplica]] = {"judge": JudgeReplica, "grounder": GrounderReplica}


# ---------------------------------------------------------------------------- deployment


def app_name(role: str, name_prefix: str = "srum") -> str:
    """Serve application name of a role's pool."""
    return f"{name_prefix}-{role}"


def autoscaling_config(pool: PoolConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Serve ``autoscaling_config`` of a pool (``extra`` keys override, e.g. in tests)."""
    out: dict[str, Any] = {
        "min_replicas": pool.min_replicas,
        "initial_replicas": pool.min_replicas,
        "max_replicas": pool.max_replicas,
        "target_ongoing_requests": pool.target_ongoing_requests,
        "upscale_delay_s": pool.upscale_delay_s,
        "downscale_delay_s": pool.downscale_delay_s,
    }
    for key in _OPTIONAL_AUTOSCALING_KEYS:
        if getattr(pool, key, None) is not None:
            out[key] = getattr(pool, key)
    out.update(extra or {})
    return out


def deployment_options(
    role: str,
    pool: PoolConfig,
    autoscaling_extra: Mapping[str, Any] | None = None,
    deployment_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``Deployment.options(...)`` of a role's pool, all from its :class:`PoolConfig`.

    ``autoscaling_extra`` / ``deployment_extra`` add or override Serve keys that the config
    does not carry (tests shorten metric windows and health checks with them).

    Raises:
        ValueError: ``max_replicas`` 0 (that role runs in the driver) or below ``min_replicas``.
    """
    if pool.max_replicas < 1:
        raise ValueError(f"runtime.{role}.max_replicas is 0: that role runs in the driver, not on Serve")
    if pool.min_replicas > pool.max_replicas:
        raise ValueError(
            f"runtime.{role}.min_replicas ({pool.min_replicas}) is above max_replicas ({pool.max_replicas})"
        )
    if pool.max_ongoing_requests < pool.max_batch_size:
        log.warning(
            "runtime.%s.max_ongoing_requests (%d) < max_batch_size (%d): merged calls never exceed %d",
            role, pool.max_ongoing_requests, pool.max_batch_size, pool.max_ongoing_requests,
        )
    actor: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if pool.resources:
        actor["resources"] = dict(pool.resources)
    out: dict[str, Any] = {
        "name": role,
        "ray_actor_options": actor,
        "max_ongoing_requests": pool.max_ongoing_requests,
        "autoscaling_config": autoscaling_config(pool, autoscaling_extra),
    }
    for key in _OPTIONAL_DEPLOYMENT_KEYS:
        if getattr(pool, key, None) is not None:
            out[key] = getattr(pool, key)
    out.update(deployment_extra or {})
    return out


def start_serve() -> None:
    """Start Serve without HTTP proxies (handles only); a running Serve is reused."""
    serve.start(proxy_location="Disabled")


def deploy_pool(
    role: str,
    cfg: SrumConfig | Mapping[str, Any],
    *,
    name_prefix: str = "srum",
    autoscaling_extra: Mapping[str, Any] | None = None,
    deployment_extra: Mapping[str, Any] | None = None,
) -> Any:
    """Deploy one role's pool as the Serve app ``<name_prefix>-<role>``; returns its handle.

    Blocks until ``min_replicas`` replicas are up (models built). Redeploying an existing
    app with a new config updates it in place.
    """
    if role not in REPLICA_CLASSES:
        raise ValueError(f"unknown pool role {role!r}; expected one of {ROLES}")
    cfg = _as_config(cfg)
    opts = deployment_options(role, getattr(cfg.runtime, role), autoscaling_extra, deployment_extra)
    start_serve()
    dep = serve.deployment(REPLICA_CLASSES[role]).options(**opts)
    return serve.run(
        dep.bind(config_to_dict(cfg)),
        name=app_name(role, name_prefix),
        route_prefix=None,
        logging_config={"enable_access_log": False},
    )


def deploy_pools(
    cfg: SrumConfig | Mapping[str, Any],
    *,
    name_prefix: str = "srum",
    autoscaling_extra: Mapping[str, Any] | None = None,
    deployment_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Deploy the grounder and judge pools whose ``max_replicas`` is above 0.

    Returns:
        ``{role: DeploymentHandle}`` for the deployed roles (a role with ``max_replicas`` 0
        is left out: it runs in the driver, see :func:`build_stage`).
    """
    cfg = _as_config(cfg)
    return {
        role: deploy_pool(
            role, cfg, name_prefix=name_prefix,
            autoscaling_extra=autoscaling_extra, deployment_extra=deployment_extra,
        )
        for role in ROLES
        if getattr(cfg.runtime, role).max_replicas > 0
    }


#: the Serve controller's actor name, namespace "serve" (ray.serve._private.constants)
SERVE_CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"


def serve_running() -> bool:
    """Whether a Serve controller runs on the connected Ray cluster (whoever started it)."""
    return any(
        a.get("namespace") == "serve" and a.get("name") == SERVE_CONTROLLER_NAME
        for a in ray.util.list_named_actors(all_namespaces=True)
    )


def shutdown_pools(name_prefix: str = "srum", *, stop_serve: bool = True) -> None:
    """Remove this run's pool apps; with ``stop_serve``, stop Serve instead when they are all
    it runs. Pass ``stop_serve=False`` when Serve belongs to someone else (it was running
    before the run): stopping it kills the controller under its other users, and Ray logs its
    pending long-poll calls as failed tasks."""
    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 - Serve not running: nothing to remove
        return
    ours = [app_name(r, name_prefix) for r in ROLES if app_name(r, name_prefix) in apps]
    if stop_serve and not set(apps) - set(ours):
        serve.shutdown()
        return
    for name in ours:
        serve.delete(name)


@contextmanager
def serve_session() -> Iterator[bool]:
    """Serve for a session of runs on the connected cluster; yields whether this session owns it.

    Starts Serve unless it runs already; on exit stops it, but only when this session started
    it and no application is left on it (each run deletes its own apps; a user's apps or a
    Serve someone else started are left alone). A session of several runs (the demo's arms)
    so pays one controller start and leaves no controller behind to be killed under pending
    calls.
    """
    owned = not serve_running()
    if owned:
        start_serve()
    try:
        yield owned
    finally:
        if owned and ray.is_initialized() and serve_running() and not serve.status().applications:
            serve.shutdown()


def build_stage(role: str, cfg: SrumConfig | Mapping[str, Any], *, name_prefix: str = "srum") -> StageClient:
    """The controller's client for a pool role.

    ``max_replicas`` 0: the replica class built in this process behind a
    :class:`LocalStage`; otherwise the role deployed on Serve behind a :class:`ServeStage`
    with ``runtime.stage_retries`` retries (its ``close()`` deletes the app).
    """
    if role not in REPLICA_CLASSES:
        raise ValueError(f"unknown pool role {role!r}; expected one of {ROLES}")
    cfg = _as_config(cfg)
    pool: PoolConfig = getattr(cfg.runtime, role)
    if pool.max_replicas == 0:
        return LocalStage(REPLICA_CLASSES[role](cfg).process)
    handle = deploy_pool(role, cfg, name_prefix=name_prefix)
    return ServeStage(handle, retries=cfg.runtime.stage_retries, owns_app=True)


def replica_actor_names(app: str, deployment: str) -> list[str]:
    """Actor names (namespace ``"serve"``) of the live replicas of ``app``'s ``deployment``.

    Serve names each replica actor ``SERVE_REPLICA::<app>#<deployment>#<id>``;
    ``ray.get_actor(name, namespace="serve")`` gives its handle (e.g. to kill it in a test).
    """
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == "serve" and a["name"].startswith(prefix)
    )
