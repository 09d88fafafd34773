"""Run metrics for the Ray dashboard, exported with ``ray.util.metrics``.

:class:`RunMetrics` turns the rows the round loop writes to ``metrics.jsonl`` (and a few live
readings: stage latency, queue depth, replicas) into Ray gauges, counters and a histogram,
every series tagged with ``run``. Ray's metrics agent serves them in Prometheus text format at
``http://HEAD:METRICS_EXPORT_PORT/metrics``; the names there carry Ray's ``ray_`` prefix and
counters a ``_total`` suffix (``srum_round`` -> ``ray_srum_round``,
``srum_samples_dropped`` -> ``ray_srum_samples_dropped_total``).

It is a no-op when disabled, and also while Ray is not initialized in this process (the
single-process loop uses it unchanged); instruments are created on first use once Ray is up.
Ray ships values to its agent every ``metrics_report_interval_ms`` (default 10 s; tests set
1000 ms, the floor), so a value shows up at the endpoint within about one interval. Gauges of
a process that exits age out of the endpoint after two intervals; counters and histograms stay.

The mapping from rows to points is pure (:func:`step_points`, :func:`round_points`) so it is
tested without Ray; :func:`parse_prometheus` reads an endpoint's text back.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from srum_ray.stages import SELECTION_KEYS

log = logging.getLogger("srum_ray")

PREFIX = "srum_"

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"

#: upper bounds (seconds) of the stage latency histogram's buckets
LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: name -> (kind, description, tag keys besides ``run``)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "srum_round": (GAUGE, "index of the last completed round", ()),
    "srum_weights_version": (GAUGE, "weights version the generators hold", ()),
    "srum_global_step": (GAUGE, "learner optimizer steps so far", ()),
    "srum_loss": (GAUGE, "flow-matching loss of the last learner step", ()),
    "srum_reward_term": (GAUGE, "reward-weighted term of the last learner step", ()),
    "srum_ref_term": (GAUGE, "reference (constraint) term of the last learner step", ()),
    "srum_grad_norm": (GAUGE, "gradient norm of the last learner step (before clipping)", ()),
    "srum_lr": (GAUGE, "learning rate of the last learner step", ()),
    "srum_global_score_mean": (GAUGE, "mean global judge score of the last round", ()),
    "srum_local_score_mean": (GAUGE, "mean region judge score of the last round", ()),
    "srum_weight_mean": (GAUGE, "mean reward weight of the last round's trained samples", ()),
    "srum_alpha_mean": (GAUGE, "mean alpha of the last round", ()),
    "srum_samples_per_second": (GAUGE, "samples per second of wall time, last round", ()),
    "srum_round_seconds": (GAUGE, "wall time of the last round", ()),
    "srum_queue_depth": (GAUGE, "requests waiting or running in a stage", ("stage",)),
    "srum_replicas": (GAUGE, "workers of a role", ("role",)),
    "srum_samples": (COUNTER, "samples generated", ()),
    "srum_samples_dropped": (COUNTER, "samples left out of training (missing scores)", ()),
    "srum_samples_unselected": (
        COUNTER, "samples the judge's verdict left out of training (reward.min_global / min_region)", (),
    ),
    "srum_judge_parse_failures": (
        COUNTER, "judge answers parsed only on a retry, or never", ("kind", "status"),
    ),
    "srum_drift_warnings": (
        COUNTER, "rounds whose judge score fell below round 0's (RoundLoop's drift warning)", (),
    ),
    "srum_stage_seconds": (HISTOGRAM, "seconds per stage call", ("stage",)),
}

_STEP_GAUGES = ("loss", "reward_term", "ref_term", "grad_norm", "lr")
_ROUND_GAUGES = {
    "round": "srum_round",
    "weights_version": "srum_weights_version",
    "global_step": "srum_global_step",
    "global_score_mean": "srum_global_score_mean",
    "local_score_mean": "srum_local_score_mean",
    "weight_mean": "srum_weight_mean",
    "alpha_mean": "srum_alpha_mean",
    "samples_per_s": "srum_samples_per_second",
    "wall_s": "srum_round_seconds",
}
_FAILURE_KEYS = tuple((kind, status) for kind in ("global", "region") for status in ("retried", "missing"))


@dataclass(frozen=True)
class Point:
    """One update: set a gauge, add to a counter, or observe a histogram value."""

    name: str
    value: float
    tags: tuple[tuple[str, str], ...] = ()


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def step_points(row: Mapping[str, Any]) -> list[Point]:
    """Points of one ``kind: step`` row: the last value of each loss term, grad norm and lr."""
    out = []
    for key in _STEP_GAUGES:
        v = _num(row.get(key))
        if v is not None:
            out.append(Point(PREFIX + key, v))
    step = _num(row.get("step"))
    if step is not None:
        out.append(Point("srum_global_step", step))
    return out


def round_points(row: Mapping[str, Any]) -> list[Point]:
    """Points of one ``kind: round`` row (the format ``RoundLoop.run_round`` writes).

    Gauges take the row's values (None is skipped); counters get the round's increments:
    ``samples``, dropped samples (``missing_policy.sample_dropped``, else ``samples -
    samples_trained`` less the unselected), samples left out by ``reward.min_global`` /
    ``min_region`` (``selection.below_min_global`` + ``below_min_region``), the judge's ``parse`` counts with status retried or missing, and the
    round's drift ``warnings`` (see :func:`srum_ray.loop.score_drop_warning`).
    Replicas come from ``replicas`` ({role: n}) when the row has them.
    """
    out = []
    for key, name in _ROUND_GAUGES.items():
        v = _num(row.get(key))
        if v is not None:
            out.append(Point(name, v))
    for role, n in sorted((row.get("replicas") or {}).items()):
        v = _num(n)
        if v is not None:
            out.append(Point("srum_replicas", v, (("role", str(role)),)))
    samples = _num(row.get("samples"))
    if samples:
        out.append(Point("srum_samples", samples))
    policy = row.get("missing_policy") or {}
    # rows before the ``selection`` key kept these counts with the missing-score policy's
    selection = row.get("selection") or policy
    unselected = sum(_num(selection.get(k)) or 0.0 for k in SELECTION_KEYS)
    dropped = _num(policy.get("sample_dropped"))
    if dropped is None and samples is not None and _num(row.get("samples_trained")) is not None:
        dropped = samples - float(row["samples_trained"]) - unselected
    if dropped:
        out.append(Point("srum_samples_dropped", dropped))
    if unselected:
        out.append(Point("srum_samples_unselected", unselected))
    parse = row.get("parse") or {}
    for kind, status in _FAILURE_KEYS:
        n = _num(parse.get(f"{kind}_{status}"))
        if n:
            out.append(Point("srum_judge_parse_failures", n, (("kind", kind), ("status", status))))
    if row.get("warnings"):
        out.append(Point("srum_drift_warnings", float(len(row["warnings"]))))
    return out


class RunMetrics:
    """The run's dashboard metrics; every method is a cheap no-op when inactive.

    Args:
        enabled: ``runtime.metrics`` from config.
        run_name: value of the ``run`` tag on every series (the run directory's name).
    """

    def __init__(self, enabled: bool, run_name: str) -> None:
        self.enabled = bool(enabled)
        self.run_name = str(run_name)
        self._instruments: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def active(self) -> bool:
        """True when updates reach Ray (enabled, Ray initialized here, no export error)."""
        return self._get() is not None

    def _get(self) -> dict[str, Any] | None:
        if not self.enabled or self._failed:
            return None
        if self._instruments is not None:
            return self._instruments
        ray = sys.modules.get("ray")  # never import Ray just to find it is not running
        if ray is None or not ray.is_initialized():
            return None
        with self._lock:
            if self._instruments is None:
                self._instruments = self._build()
        return self._instruments

    def _build(self) -> dict[str, Any]:
        from ray.util import metrics as rm

        made: dict[str, Any] = {}
        for name, (kind, desc, tag_keys) in METRICS.items():
            keys = ("run", *tag_keys)
            if kind == GAUGE:
                m = rm.Gauge(name, description=desc, tag_keys=keys)
            elif kind == COUNTER:
                m = rm.Counter(name, description=desc, tag_keys=keys)
            else:
                m = rm.Histogram(name, description=desc, boundaries=list(LATENCY_BUCKETS_S), tag_keys=keys)
            made[name] = m.set_default_tags({"run": self.run_name})
        return made

    def record(self, points: Iterable[Point]) -> None:
        """Apply ``points``; a Ray error is logged once and turns metrics off (never raised)."""
        inst = self._get()
        if inst is None:
            return
        try:
            for p in points:
                kind = METRICS[p.name][0]
                tags = dict(p.tags) or None
                if kind == GAUGE:
                    inst[p.name].set(p.value, tags=tags)
                elif kind == COUNTER:
                    if p.value > 0:
                        inst[p.name].inc(p.value, tags=tags)
                else:
                    inst[p.name].observe(p.value, tags=tags)
        except Exception as e:  # metrics must never stop a training run
            self._failed = True
            log.warning("dashboard metrics turned off after an export error: %s: %s", type(e).__name__, e)

    def on_step(self, metrics_row: Mapping[str, Any]) -> None:
        """Record a learner step row (``kind: step`` in metrics.jsonl)."""
        self.record(step_points(metrics_row))

    def on_round(self, round_row: Mapping[str, Any]) -> None:
        """Record a round row (``kind: round`` in metrics.jsonl)."""
        self.record(round_points(round_row))

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One call of ``stage`` (generate, propose, judge, train, sync, ...) took ``seconds``."""
        if seconds >= 0:
            self.record([Point("srum_stage_seconds", float(seconds), (("stage", stage),))])

    def set_queue_depth(self, stage: str, n: int) -> None:
        """``n`` requests are waiting in or running through ``stage``."""
        self.record([Point("srum_queue_depth", float(n), (("stage", stage),))])

    def set_replicas(self, role: str, n: int) -> None:
        """``role`` has ``n`` workers now."""
        self.record([Point("srum_replicas", float(n), (("role", role),))])


# ---------------------------------------------------------------------- reading back
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One line of a Prometheus text exposition: name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str, prefix: str = "") -> list[Sample]:
    """Samples of a Prometheus text exposition whose name starts with ``prefix``.

    Comments (``# HELP``, ``# TYPE``) and blank lines are skipped; label values are unescaped.
    """
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or not line.startswith(prefix):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in _LABEL.findall(m.group(2) or "")
        }
        out.append(Sample(m.group(1), labels, float(m.group(3))))
    return out


def scrape(url: str, prefix: str = "ray_" + PREFIX, timeout: float = 5.0) -> list[Sample]:
    """Samples named ``prefix*`` at a metrics endpoint, e.g. ``http://127.0.0.1:PORT/metrics``."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse_prometheus(resp.read().decode("utf-8", "replace"), prefix)
