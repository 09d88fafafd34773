"""Run directory: commit point, quarantine of an interrupted round, metrics truncation."""

import json

import numpy as np
import pytest
from PIL import Image

from srum_ray.config.load import load_config
from srum_ray.rundir import RunDir, RunDirError
from srum_ray.types import SampleRecord


@pytest.fixture
def rd(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=t"])
    return RunDir.create(cfg)


def _round(rd, r):
    rd.start_round(r)
    rec = SampleRecord(id=f"r{r}", round=r, prompt="p", seed=1, weights_version=r)
    rd.write_image(r, rec, Image.new("RGB", (8, 8)))
    rd.write_reward_map(r, rec, np.ones((8, 8)))
    rd.write_samples(r, [rec])
    rd.checkpoint_dir(r).mkdir(parents=True)
    rd.append_metrics({"kind": "round", "round": r})
    return rec


def test_create_writes_config_and_state(rd):
    assert (rd.path / "config.yaml").is_file()
    assert rd.state() == {"last_completed_round": -1, "weights_version": 0, "global_step": 0}
    assert rd.path.name.startswith("t-")
    assert RunDir.open_for_resume(rd.path).load_config().run.name == "t"


def test_commit_then_read_back(rd):
    rec = _round(rd, 0)
    rd.commit_round(0, weights_version=1, global_step=4)
    assert rd.state()["last_completed_round"] == 0
    assert not rd.partial_round_dir(0).exists()
    back = rd.read_samples(0)
    assert back[0].id == rec.id and back[0].image == "images/r0.png"
    assert (rd.round_dir(0) / back[0].image).is_file()
    assert np.load(rd.round_dir(0) / back[0].reward_map).dtype == np.float32


def test_commit_needs_checkpoint(rd):
    rd.start_round(0)
    with pytest.raises(RunDirError, match="no checkpoint"):
        rd.commit_round(0, 1, 1)


def test_quarantine_moves_uncommitted_round_and_metrics(rd):
    _round(rd, 0)
    rd.commit_round(0, 1, 4)
    _round(rd, 1)  # interrupted: never committed
    rd.append_metrics({"kind": "step", "round": 1, "loss": 1.0})
    moved = rd.quarantine_uncommitted()
    assert any("rounds/0001.partial" in m for m in moved)
    assert any("checkpoints/0001" in m for m in moved)
    assert not rd.partial_round_dir(1).exists() and not rd.checkpoint_dir(1).exists()
    assert rd.round_dir(0).is_dir() and rd.checkpoint_dir(0).is_dir()
    rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert {r["round"] for r in rows} == {0}
    crashed = list((rd.path / "crashed").rglob("metrics.jsonl"))
    assert len(crashed) == 1 and len(crashed[0].read_text().splitlines()) == 2
    assert list((rd.path / "crashed").rglob("r1.png"))  # nothing produced is lost


def test_open_for_resume_errors(tmp_path):
    with pytest.raises(RunDirError, match="not found"):
        RunDir.open_for_resume(tmp_path / "nope")
    with pytest.raises(RunDirError, match="config.yaml missing"):
        RunDir.open_for_resume(tmp_path)
