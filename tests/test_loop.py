"""The single-process round loop end to end on the tiny default: run directory, online
weights, determinism, resume after an interrupted round."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from srum_ray.config.load import load_config
from srum_ray.loop import RoundLoop, build_roles
from srum_ray.rewards import dense_reward_map
from srum_ray.rundir import RunDir
from srum_ray.types import Box

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "id", "prompt", "seed", "weights_version", "image", "width", "height", "boxes", "kept",
    "region_scores", "global_score", "alpha", "convention", "overlap", "reward_map",
    "judge_raw", "parse",
}


def tiny_cfg(tmp_path, *extra):
    return load_config(
        ROOT / "configs/tiny.yaml",
        [f"run.output_dir={tmp_path}", "run.progress=false",
         f"data.prompts=[{ROOT / 'configs/prompts/tiny.txt'}]", *extra],
    )


def run(cfg, run_dir=None, roles=None):
    rd = run_dir or RunDir.create(cfg)
    RoundLoop(cfg, rd, roles=roles).run()
    return rd


def samples(rd, r):
    return [json.loads(l) for l in (rd.round_dir(r) / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A straight 2-round tiny run (shared by several tests)."""
    return run(tiny_cfg(tmp_path_factory.mktemp("straight")))


def test_run_directory_is_complete(straight):
    rd = straight
    assert (rd.path / "config.yaml").is_file()
    assert rd.state() == {"last_completed_round": 1, "weights_version": 2, "global_step": 8}
    for r in (0, 1):
        d = rd.round_dir(r)
        recs = samples(rd, r)
        assert len(recs) == 8
        assert (d / "overview.png").is_file()
        assert (rd.checkpoint_dir(r) / "trainable.safetensors").is_file()
        for rec in recs:
            assert REQUIRED <= rec.keys()
            assert rec["weights_version"] == r  # round r is drawn with the version round r-1 made
            assert (d / rec["image"]).is_file() and (d / rec["overlay"]).is_file()
            R = np.load(d / rec["reward_map"])
            assert R.shape == (rec["height"], rec["width"]) and R.dtype == np.float32
            n = len(rec["boxes"])
            assert len(rec["kept"]) == n and len(rec["region_scores"]) == n
            assert len(rec["parse"]["regions"]) == n
            assert rec["parse"]["global"] in {"parsed", "retried", "missing"}
            assert rec["judge_raw"]["global"], "the raw global answer is kept"
            for box in rec["boxes"]:
                assert 0 <= box[0] < box[2] <= rec["width"] and 0 <= box[1] < box[3] <= rec["height"]
            # the saved map is exactly what the kept boxes and their scores paint
            kept = [i for i, k in enumerate(rec["kept"]) if k]
            expect = dense_reward_map(
                rec["height"], rec["width"], [Box.from_list(rec["boxes"][i]) for i in kept],
                [rec["region_scores"][i] for i in kept], rec["convention"], rec["overlap"],
            )
            np.testing.assert_array_equal(R, expect)
            if rec["trained"]:
                assert rec["alpha"] == pytest.approx((rec["global_score"] + 1) / 2)
    rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert all(np.isfinite(s["loss"]) and s["grad_norm"] >= 0 for s in steps)
    assert [r["weights_version"] for r in rounds] == [1, 2]
    for r in rounds:
        assert sum(r["parse"].get(f"global_{k}", 0) for k in ("parsed", "retried", "missing")) == 8
        assert r["filter"]["kept"] + r["filter"]["dropped"] == r["boxes"]
        assert {"generate", "propose", "filter", "judge", "reward", "train", "sync"} <= r["timings_s"].keys()


def test_rounds_are_online(straight, tmp_path):
    """Round 1 draws with the weights round 0 trained: its images differ from what the base
    weights draw for the same prompts and seeds."""
    rd = straight
    base = load_file(str(rd.checkpoint_dir(0) / "trainable.safetensors"))
    cfg = tiny_cfg(tmp_path)
    roles = build_roles(cfg, "cpu")
    fresh = roles.generator.trainable_module().state_dict()
    assert any(not torch.equal(base[k], fresh[k]) for k in base), "round 0 changed the weights"
    # the whole round as one batch, as the run drew it (CPU kernels round differently at
    # other batch sizes: ~5e-7 in the latents, enough to move a pixel by one level)
    recs = samples(rd, 1)
    assert cfg.generation.batch_size == len(recs)
    again = roles.generator.generate([r["prompt"] for r in recs], [r["seed"] for r in recs])
    roles.generator.load_trainable_state(base, version=1)
    online = roles.generator.generate([r["prompt"] for r in recs], [r["seed"] for r in recs])
    from PIL import Image

    saved = [np.asarray(Image.open(rd.round_dir(1) / r["image"])) for r in recs]
    assert all(np.array_equal(np.asarray(a), s) for a, s in zip(online.images, saved))
    assert not all(np.array_equal(np.asarray(a), s) for a, s in zip(again.images, saved))


class Crash(RuntimeError):
    pass




def test_resume_after_crash_matches_straight_run(straight, tmp_path):
    cfg = tiny_cfg(tmp_path, "generation.batch_size=4")
    straight_b4 = run(tiny_cfg(tmp_path / "b4", "generation.batch_size=4"))
    roles = build_roles(cfg, "cpu")
    real = roles.judge.judge
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # round 1, second chunk: round 0 committed, chunk 1 written
            raise Crash("killed")
        return real(*a, **k)

    roles.judge.judge = crashing
    rd = RunDir.create(cfg)
    with pytest.raises(Crash):
        RoundLoop(cfg, rd, roles=roles).run()
    assert rd.state()["last_completed_round"] == 0
    assert rd.partial_round_dir(1).is_dir()
    # a new process resumes from the run directory
    resumed = RunDir.open_for_resume(rd.path)
    RoundLoop(resumed.load_config(), resumed).run()
    assert resumed.state() == straight_b4.state()
    assert list((rd.path / "crashed").rglob("r0001-*.png")), "the interrupted round's images are kept"
    for r in (0, 1):
        a, b = samples(resumed, r), samples(straight_b4, r)
        assert [x["seed"] for x in a] == [x["seed"] for x in b]
        assert [x["weights_version"] for x in a] == [r] * 8
        assert [x["global_score"] for x in a] == [x["global_score"] for x in b]
        assert [x["region_scores"] for x in a] == [x["region_scores"] for x in b]
    rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["kind"] == "round"] == [0, 1]  # no round repeated
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 9))
    wa = load_file(str(resumed.checkpoint_dir(1) / "trainable.safetensors"))
    wb = load_file(str(straight_b4.checkpoint_dir(1) / "trainable.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_resume_extends_a_finished_run(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.rounds=1")
    rd = run(cfg)
    assert rd.state()["last_completed_round"] == 0
    again = RunDir.open_for_resume(rd.path)
    RoundLoop(again.load_config(["run.rounds=2"]), again).run()
    assert again.state()["last_completed_round"] == 1
    assert [r["weights_version"] for r in samples(again, 1)] == [1] * 8


def test_batch_size_does_not_change_the_round(straight, tmp_path):
    """Chunking (generation.batch_size) is an implementation detail: same samples, same scores."""
    other = run(tiny_cfg(tmp_path, "generation.batch_size=4", "run.rounds=1"))
    a, b = samples(other, 0), samples(straight, 0)
    assert [x["global_score"] for x in a] == [x["global_score"] for x in b]
    assert [x["boxes"] for x in a] == [x["boxes"] for x in b]


def test_cpu_threads_is_applied_and_zero_leaves_torchs_default():
    from srum_ray.runtime.local import apply_cpu_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        apply_cpu_threads(load_config(None, ["run.cpu_threads=0"]))
        assert torch.get_num_threads() == 2
        apply_cpu_threads(load_config(None, ["run.cpu_threads=1"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _scores(mean, std, n):
    return {"global_score_mean": mean, "global_score_std": std, "global_score_n": n}


def test_score_drop_warning_needs_a_fall_beyond_the_floor_and_the_noise():
    from srum_ray.loop import DRIFT_DROP, score_drop_warning

    first = _scores(-0.15, 0.3, 64)
    # -0.2 with 64 scores a round: 3.8 standard errors of the difference
    warning = score_drop_warning(first, _scores(-0.35, 0.3, 64))
    assert warning is not None and "-0.150" in warning and "-0.350" in warning and "3.8 standard errors" in warning
    # the same fall on 16 noisy scores is within the noise
    assert score_drop_warning(_scores(-0.15, 0.6, 16), _scores(-0.35, 0.6, 16)) is None
    # a fall below the floor is not one, however sure; a rise never is
    assert score_drop_warning(_scores(0.5, 0.0, 64), _scores(0.5 - DRIFT_DROP / 2, 0.0, 64)) is None
    assert score_drop_warning(first, _scores(0.4, 0.3, 64)) is None
    exact = score_drop_warning(_scores(0.5, 0.0, 8), _scores(0.2, 0.0, 8))
    assert exact is not None and "standard errors" not in exact
    # a round without global scores cannot be compared
    assert score_drop_warning(first, _scores(None, None, 0)) is None
    assert score_drop_warning(_scores(-0.1, 0.3, 0), _scores(-0.9, 0.3, 64)) is None


def test_a_drift_warning_reaches_the_log_and_metrics(tmp_path, monkeypatch, caplog):
    """With the thresholds at nothing, a round's score against round 0's is always a warning:
    the row and the log carry it, and a resumed run reads round 0's row back from metrics.jsonl."""
    import logging

    import srum_ray.loop as loop

    monkeypatch.setattr(loop, "DRIFT_DROP", -1e9)
    monkeypatch.setattr(loop, "DRIFT_SE", -1e9)
    with caplog.at_level(logging.WARNING, logger="srum_ray"):
        rd = run(tiny_cfg(tmp_path))
        again = RunDir.open_for_resume(rd.path)
        RoundLoop(again.load_config(["run.rounds=3"]), again).run()
    rows = [json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines()]
    rounds = {row["round"]: row for row in rows if row.get("kind") == "round"}
    assert "warnings" not in rounds[0]
    for r in (1, 2):
        assert len(rounds[r]["warnings"]) == 1 and f"from {rounds[0]['global_score_mean']:+.3f}" in rounds[r]["warnings"][0]
        assert any(f"round {r}: the judge's mean global score fell" in m.getMessage() for m in caplog.records)
    assert rd.round_metrics(1) == rounds[1] and rd.round_metrics(5) is None


def test_samples_left_out_by_selection_are_counted_apart_from_the_missing_policy(tmp_path):
    from srum_ray.runtime.metrics import Point, round_points

    rd = run(tiny_cfg(tmp_path, "run.rounds=1", "reward.min_global=1.0"))
    row = next(json.loads(l) for l in (rd.path / "metrics.jsonl").read_text().splitlines() if '"kind": "round"' in l)
    left_out = row["selection"]["below_min_global"]
    assert left_out > 0 and not set(row["missing_policy"]) & {"below_min_global", "below_min_region"}
    assert left_out + row["missing_policy"].get("sample_dropped", 0) == row["samples"] - row["samples_trained"]
    assert sum(not s["trained"] and "reward.min_global" in s.get("drop_reason", "") for s in samples(rd, 0)) == left_out
    assert Point("srum_samples_unselected", float(left_out)) in round_points(row)
