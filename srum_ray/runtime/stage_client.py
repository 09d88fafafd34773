"""Driver-side clients of a stage role (grounding, judging), local or behind Ray Serve.

The controller sends each chunk of samples through a role with :meth:`StageClient.call`
and does not care where the role runs:

* :class:`LocalStage` runs a function in the driver process (a role whose pool has
  ``max_replicas: 0``). Calls from several threads are serialized by a lock, because the
  role objects (model, judge counters) are not thread-safe.
* :class:`ServeStage` sends the chunk to a Ray Serve deployment (``actors/pools.py``) and
  blocks for the answer. When the replica serving it dies mid-request, Serve does NOT
  re-send the request: the handle raises :class:`ray.exceptions.ActorDiedError` (a
  :class:`~ray.exceptions.RayActorError`), measured on Ray 2.60 by killing a replica with
  requests in flight. Serve only re-routes requests that no replica has accepted yet. So the
  client re-sends the whole request, up to ``retries`` times, and counts it in
  :attr:`StageClient.retries_used`. Any other exception (a bad request, a bug in a stage)
  propagates unchanged.

Exactly once: one :meth:`~StageClient.call` returns exactly one batch, the answer of the one
attempt that completed; an attempt whose replica died never delivered anything, so a retried
chunk cannot come back twice. The caller joins results to its samples by record id.

A role answers with a :class:`StageReply` (the batch plus the counters of the handler call
that served it); the clients unwrap it, return the batch and add the counters to a running
total that :meth:`StageClient.take_counters` hands out (once per round, say).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from srum_ray.types import RolloutBatch

log = logging.getLogger("srum_ray")


@dataclass
class StageReply:
    """What a stage replica returns for one request.

    Attributes:
        batch: the request's batch with this stage's record fields filled.
        replica: id of the replica that served it (Serve: its actor name
            ``SERVE_REPLICA::app#deployment#id``; in the driver: ``local:<pid>``).
        batch_seq: 1-based index of the handler call on that replica that served it.
        batch_requests: how many requests that handler call merged (Serve batching).
        counters: the handler call's counters (judge/filter/grounder statistics). A merged
            call reports them on its first request only (zeros on the others), so the sum
            over all replies equals the sum over all handler calls.
        busy_s: seconds the handler call spent in the role's stages (not queueing or
            batching waits); like the counters, on the merged call's first request only.
    """

    batch: RolloutBatch
    replica: str
    batch_seq: int
    batch_requests: int
    counters: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0


def images_only(batch: RolloutBatch) -> RolloutBatch:
    """The records and images of ``batch`` without its tensors (a small request).

    The records are the same objects, not copies.
    """
    return RolloutBatch(records=batch.records, images=batch.images)


class StageClient:
    """Interface of a stage role as the driver sees it.

    Attributes:
        retries_used: requests re-sent because the replica serving them died.
        calls: completed calls.
    """

    def __init__(self) -> None:
        self._counter_lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._last = threading.local()
        self.retries_used = 0
        self.calls = 0

    def call(self, batch: RolloutBatch) -> RolloutBatch:
        """Run the stage on ``batch`` and return the answered batch (blocking, thread-safe)."""
        raise NotImplementedError

    def num_replicas(self) -> int:
        """Workers serving this stage right now."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where this stage runs, for logs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what this client owns (nothing by default)."""
        return None

    def release(self) -> None:
        """Stop this client's own background work in this process (nothing by default)."""
        return None

    def take_counters(self) -> dict[str, int]:
        """Counters summed over the calls since the last take (then reset to empty)."""
        with self._counter_lock:
            out, self._counters = self._counters, {}
        return out

    def last_busy_s(self) -> float | None:
        """``busy_s`` of the reply to this thread's last :meth:`call` (None if the stage
        returned a bare batch). Summed over a round's calls: the replicas' busy time."""
        return getattr(self._last, "busy_s", None)

    def _unwrap(self, reply: Any) -> RolloutBatch:
        if isinstance(reply, StageReply):
            with self._counter_lock:
                for k, v in reply.counters.items():
                    self._counters[k] = self._counters.get(k, 0) + int(v)
                self.calls += 1
            self._last.busy_s = float(reply.busy_s)
            return reply.batch
        if isinstance(reply, RolloutBatch):
            with self._counter_lock:
                self.calls += 1
            self._last.busy_s = None
            return reply
        raise TypeError(
            f"a stage must return a RolloutBatch or StageReply, got {type(reply).__name__}"
        )


class LocalStage(StageClient):
    """A stage run in the driver process: ``fn(batch) -> RolloutBatch | StageReply``.

    Args:
        fn: the stage, e.g. ``JudgeReplica(cfg).process`` or ``lambda b: judge_stage(j, b)``.
    """

    def __init__(self, fn: Callable[[RolloutBatch], Any]) -> None:
        super().__init__()
        self._fn = fn
        self._lock = threading.Lock()

    def call(self, batch: RolloutBatch) -> RolloutBatch:
        with self._lock:
            reply = self._fn(batch)
        return self._unwrap(reply)

    def num_replicas(self) -> int:
        return 1

    def describe(self) -> str:
        return "in the driver"


class ServeStage(StageClient):
    """A stage served by a Ray Serve deployment (see :func:`actors.pools.deploy_pools`).

    Args:
        handle: the deployment's handle (``serve.get_deployment_handle`` or
            ``deploy_pools(...)[role]``).
        retries: how many times one request is re-sent after its replica died
            (``runtime.stage_retries``); 0 never re-sends.
        timeout_s: seconds to wait for one attempt (None: no limit); a timeout raises
            :class:`TimeoutError` and is not retried.
        backoff_s: pause before the k-th retry is ``k * backoff_s`` (lets the router learn
            that the replica is gone and the controller start its replacement).
        owns_app: :meth:`close` deletes the deployment's Serve application.
    """

    def __init__(
        self,
        handle: Any,
        retries: int = 3,
        timeout_s: float | None = None,
        backoff_s: float = 0.2,
        owns_app: bool = False,
    ) -> None:
        super().__init__()
        if retries < 0:
            raise ValueError(f"ServeStage retries must be >= 0, got {retries}")
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import ReplicaUnavailableError

        self._handle = handle
        self.retries = int(retries)
        self.timeout_s = timeout_s
        self.backoff_s = float(backoff_s)
        self.owns_app = owns_app
        # RayActorError covers ActorDiedError (the replica died: what a killed replica
        # raises) and ActorUnavailableError (unreachable for now).
        self._retry_on: tuple[type[BaseException], ...] = (RayActorError, ReplicaUnavailableError)

    @property
    def app_name(self) -> str:
        return self._handle.app_name

    @property
    def deployment_name(self) -> str:
        return self._handle.deployment_name

    def call(self, batch: RolloutBatch) -> RolloutBatch:
        attempt = 0
        while True:
            try:
                reply = self._handle.remote(batch).result(timeout_s=self.timeout_s)
            except self._retry_on as e:
                if attempt >= self.retries:
                    raise
                attempt += 1
                with self._counter_lock:
                    self.retries_used += 1
                log.warning(
                    "%s: replica lost mid-request (%s); re-sending %d samples (retry %d/%d)",
                    self.deployment_name, type(e).__name__, len(batch), attempt, self.retries,
                )
                time.sleep(self.backoff_s * attempt)
                continue
            return self._unwrap(reply)

    def num_replicas(self) -> int:
        """RUNNING replicas of the deployment, as the Serve controller reports them."""
        return running_replicas(self.app_name, self.deployment_name)

    def describe(self) -> str:
        return f"serve app {self.app_name!r} ({self.num_replicas()} running)"

    def close(self) -> None:
        if self.owns_app:
            from ray import serve

            serve.delete(self.app_name)
        self.release()

    def release(self) -> None:
        """Shut the handle's router down: it pushes metrics to the Serve controller and polls
        it for replica changes from threads of this process, which otherwise go on after the
        run (and log a failure every few seconds once the Ray session is gone)."""
        self._handle.shutdown()


def running_replicas(app_name: str, deployment_name: str) -> int:
    """RUNNING replicas of ``app_name``'s deployment ``deployment_name`` (0 if unknown)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment_name not in app.deployments:
        return 0
    return int(app.deployments[deployment_name].replica_states.get("RUNNING", 0))
