"""The run directory: everything a run produces, and the commit point that makes resume exact.

Layout (paths in records are relative to the round directory)::

    RUN/config.yaml                 resolved config
    RUN/state.json                  last completed round, weights version, learner step
    RUN/metrics.jsonl               one line per learner step and per round
    RUN/rounds/NNNN/samples.jsonl   one record per image (SampleRecord)
    RUN/rounds/NNNN/images/ID.png   generated images
    RUN/rounds/NNNN/reward_maps/ID.npy   R before alpha, float32, image resolution
    RUN/rounds/NNNN/overlays/ID.png      image + boxes + scores + reward map
    RUN/rounds/NNNN/overview.png         the first 64 overlays of the round on one sheet
    RUN/checkpoints/NNNN/           learner state after round NNNN (weights version NNNN+1)
    RUN/crashed/                    what an interrupted round had written (kept, not reused)

A round is written into ``rounds/NNNN.partial`` and checkpointed into ``checkpoints/NNNN``;
rewriting ``state.json`` (atomic rename) commits it, and only then is the round directory
renamed to its final name. On resume, anything past the committed round moves to ``crashed/``
and the round is redrawn from the committed checkpoint (its prompts and seeds are a pure
function of the run seed and round index), so no round is lost or repeated.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from srum_ray.config.load import ConfigError, dump_config, load_config
from srum_ray.config.schema import SrumConfig
from srum_ray.types import SampleRecord

STATE = "state.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
#: what every engine's checkpoint directory holds (the torch and DeepSpeed engines' save)
CHECKPOINT_FILES = ("trainable.safetensors", "engine.json")


class RunDirError(ValueError):
    """A run directory is missing or not resumable (message names the path)."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    """One run's directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(cls, cfg: SrumConfig) -> "RunDir":
        """A new directory ``output_dir/NAME-YYYYmmdd-HHMMSS`` holding the resolved config."""
        root = Path(cfg.run.output_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = root / f"{cfg.run.name}-{stamp}"
        k = 1
        while path.exists():
            path = root / f"{cfg.run.name}-{stamp}-{k}"
            k += 1
        try:
            (path / "rounds").mkdir(parents=True)
            (path / "checkpoints").mkdir()
        except OSError as e:
            raise RunDirError(f"cannot create run directory {path}: {e.strerror}") from e
        rd = cls(path)
        dump_config(cfg, path / CONFIG)
        rd.write_state({"last_completed_round": -1, "weights_version": 0, "global_step": 0})
        return rd

    @classmethod
    def open_for_resume(cls, path: str | Path) -> "RunDir":
        """An existing run directory (to resume or show); raises :class:`RunDirError` if it is
        not one, naming the runs inside when it holds some (a demo directory)."""
        rd = cls(path)
        if not rd.path.exists():
            raise RunDirError(f"run directory not found: {rd.path}")
        if not rd.path.is_dir():
            raise RunDirError(f"{rd.path} is a file, not a run directory")
        for name in (CONFIG, STATE):
            if not (rd.path / name).is_file():
                inside = sorted(d.name for d in rd.path.iterdir() if (d / CONFIG).is_file() and (d / STATE).is_file())
                hint = f"; the runs inside it: {', '.join(inside)}" if inside else ""
                raise RunDirError(f"{rd.path} is not a srum-ray run directory ({name} missing){hint}")
        try:
            rd.state()
        except (json.JSONDecodeError, KeyError) as e:
            raise RunDirError(f"{rd.path / STATE} is corrupt: {e}") from e
        return rd

    def check_resumable(self, rounds: int) -> None:
        """Raise :class:`RunDirError` if a resume to ``rounds`` rounds cannot work: fewer rounds
        than are already complete, or a completed round's checkpoint missing or incomplete
        (what the learner and the generators restore from), checked before any model loads."""
        last = self.state()["last_completed_round"]
        if rounds < last + 1:
            raise RunDirError(
                f"run.rounds={rounds} is below the {last + 1} rounds already complete in {self.path}"
            )
        if last < 0:
            return
        ckpt = self.checkpoint_dir(last)
        missing = [n for n in CHECKPOINT_FILES if not (ckpt / n).exists()]
        if missing:
            raise RunDirError(
                f"cannot resume {self.path}: the checkpoint of round {last} ({ckpt}) is "
                f"{'missing' if not ckpt.is_dir() else 'incomplete: no ' + ', '.join(missing)}"
            )

    def load_config(self, overrides: Iterable[str] = ()) -> SrumConfig:
        try:
            return load_config(self.path / CONFIG, list(overrides))
        except ConfigError as e:
            raise RunDirError(f"{self.path / CONFIG}: {e}") from e

    # ----------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        data = json.loads((self.path / STATE).read_text(encoding="utf-8"))
        for key in ("last_completed_round", "weights_version", "global_step"):
            data[key] = int(data[key])
        return data

    def write_state(self, state: dict[str, Any]) -> None:
        _atomic_write(self.path / STATE, json.dumps(state, indent=2))

    def quarantine_uncommitted(self) -> list[str]:
        """Move whatever an interrupted round wrote past the committed state into crashed/.

        Returns the moved paths (relative to the run directory).
        """
        last = self.state()["last_completed_round"]
        moved: list[str] = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest_root = self.path / "crashed" / stamp
        for sub in ("rounds", "checkpoints"):
            base = self.path / sub
            if not base.is_dir():
                continue
            for p in sorted(base.iterdir()):
                idx = p.name.split(".")[0]
                if p.name.endswith(".partial") or p.name.endswith(".tmp") or (
                    idx.isdigit() and int(idx) > last
                ):
                    dest = dest_root / sub / p.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(p), str(dest))
                    moved.append(str(dest.relative_to(self.path)))
        # a committed round whose rename did not happen yet: finish the rename
        partial = self.path / "rounds" / f"{last:04d}.partial"
        if last >= 0 and partial.is_dir() and not self.round_dir(last).exists():
            partial.rename(self.round_dir(last))
        metrics = self.path / METRICS
        if metrics.is_file():
            keep, drop = [], []
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    rnd = int(json.loads(line).get("round", -1))
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    rnd = last + 1  # unreadable line: keep it aside, do not lose it
                (keep if rnd <= last else drop).append(line)
            if drop:
                dest_root.mkdir(parents=True, exist_ok=True)
                (dest_root / METRICS).write_text("\n".join(drop) + "\n", encoding="utf-8")
                _atomic_write(metrics, "".join(l + "\n" for l in keep))
                moved.append(str((dest_root / METRICS).relative_to(self.path)))
        return moved

    # ----------------------------------------------------------------- rounds
    def round_dir(self, r: int) -> Path:
        return self.path / "rounds" / f"{r:04d}"

    def partial_round_dir(self, r: int) -> Path:
        return self.path / "rounds" / f"{r:04d}.partial"

    def checkpoint_dir(self, r: int) -> Path:
        return self.path / "checkpoints" / f"{r:04d}"

    def start_round(self, r: int) -> Path:
        d = self.partial_round_dir(r)
        for sub in ("images", "reward_maps", "overlays"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return d

    def write_image(self, r: int, rec: SampleRecord, image: Image.Image) -> None:
        rel = f"images/{rec.id}.png"
        image.save(self.partial_round_dir(r) / rel)
        rec.image = rel

    def write_reward_map(self, r: int, rec: SampleRecord, R: np.ndarray) -> None:
        rel = f"reward_maps/{rec.id}.npy"
        np.save(self.partial_round_dir(r) / rel, R.astype(np.float32))
        rec.reward_map = rel

    def write_overlay(self, r: int, rec: SampleRecord, picture: Image.Image) -> None:
        rel = f"overlays/{rec.id}.png"
        picture.save(self.partial_round_dir(r) / rel)
        rec.overlay = rel

    def write_samples(self, r: int, records: Iterable[SampleRecord]) -> Path:
        path = self.partial_round_dir(r) / "samples.jsonl"
        text = "".join(json.dumps(rec.to_json()) + "\n" for rec in records)
        _atomic_write(path, text)
        return path

    def commit_round(self, r: int, weights_version: int, global_step: int) -> None:
        """Make round ``r`` complete: state.json first (the commit point), then the rename."""
        if not self.checkpoint_dir(r).is_dir():
            raise RunDirError(f"round {r} has no checkpoint at {self.checkpoint_dir(r)}")
        self.write_state(
            {"last_completed_round": r, "weights_version": weights_version, "global_step": global_step}
        )
        self.partial_round_dir(r).rename(self.round_dir(r))

    def prune_checkpoints(self, keep_round: int) -> None:
        """Delete checkpoints of rounds before ``keep_round`` (``keep_all_checkpoints: false``)."""
        for p in (self.path / "checkpoints").iterdir():
            if p.name.isdigit() and int(p.name) < keep_round:
                shutil.rmtree(p)

    # ----------------------------------------------------------------- metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def round_metrics(self, r: int) -> dict[str, Any] | None:
        """Round ``r``'s row of ``metrics.jsonl`` (the last one written, if an interrupted round
        was redone), or None if it has none."""
        path = self.path / METRICS
        if not path.is_file():
            return None
        rows = [json.loads(l) for l in path.read_text().splitlines() if l]
        rows = [row for row in rows if row.get("kind") == "round" and row.get("round") == r]
        return rows[-1] if rows else None

    def read_samples(self, r: int) -> list[SampleRecord]:
        path = self.round_dir(r) / "samples.jsonl"
        return [SampleRecord.from_json(json.loads(l)) for l in path.read_text().splitlines() if l]
