"""The shapes demo and the results sweep, end to end at a tiny size (random small model, local runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.shapes_umm import ShapesGenerator, ShapesNetConfig
from srum_ray.shapes import results as results_mod
from srum_ray.shapes.demo import (
    DRIFT_RATIO,
    Evaluator,
    arm_overrides,
    drift_warning,
    ground_truth_images,
    run_demo,
    scoring_config,
    subsample,
)
from srum_ray.shapes.evaluate import drawn_objects, evaluate
from srum_ray.shapes.splits import load_split_prompts


def tiny_overrides(checkpoint) -> list[str]:
    return [
        f"model.checkpoint={checkpoint}", "runtime.mode=local", "run.rounds=2", "data.prompts_per_round=6",
        "generation.num_inference_steps=2", "generation.batch_size=6", "train.steps_per_round=2",
        "train.batch_size=3", "run.progress=false",
    ]


def test_demo_writes_tables_plot_and_pictures(checkpoint, tmp_path, monkeypatch):
    import srum_ray.shapes.demo as demo_mod

    scales = []

    class Spy(Evaluator):  # the scale the scoring generator is built with
        def __init__(self, cfg, *a, **k):
            scales.append(cfg.generation.guidance_scale)
            super().__init__(cfg, *a, **k)

    monkeypatch.setattr(demo_mod, "Evaluator", Spy)
    out = run_demo("configs/shapes.yaml", tiny_overrides(checkpoint), arms=("sft", "srum"), seed=3,
                   n_val=6, n_test=12, out=tmp_path / "demo", eval_guidance=2.0, progress=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    # scored at --eval-guidance, the rollouts at the config's 3.0: the report says both
    assert res["guidance"] == {"rollouts": 3.0, "scoring": 2.0}
    assert "sampled at guidance 2 (the rollouts:\n3)" in (out / "report.md").read_text()
    assert scales == [2.0]
    assert scoring_config("configs/shapes.yaml", tiny_overrides(checkpoint)).generation.guidance_scale == 3.0
    test = subsample(load_split_prompts("configs/prompts/shapes/test.jsonl"), 12)
    assert set(res["test"]) == {"base", "sft", "srum"}
    for table in res["test"].values():
        assert 0.0 <= table["overall"] <= 1.0
        assert {"colour", "shape", "texture", "spatial", "numeracy", "complex", "seen", "unseen"} <= set(table)
    # one validation point for the base weights and one after each round
    assert [r for r, _ in res["val_curves"]["srum"]] == [-1, 0, 1]
    assert res["val_curves"]["srum"][0] == res["val_curves"]["sft"][0]
    report = (out / "report.md").read_text()
    assert "| srum |" in report and "| sft |" in report and "| base |" in report
    kinds = report.split("## Constraints that hold (test)", 1)[1]
    assert "| model | exists |" in kinds
    assert f"| srum | {100 * res['test']['srum']['per_kind']['exists']:.1f} |" in kinds
    # what the images draw: every model and the rendered ground truth of the same test prompts
    assert list(res["drawn"]) == ["ground truth", "base", "sft", "srum"]
    truth = drawn_objects(ground_truth_images(test, 3), [p.spec for p in test])
    assert res["drawn"]["ground truth"] == pytest.approx(truth)
    assert 1.0 <= truth["objects"] <= 4.0 and 0.0 < truth["ink"] < 0.5  # 1 to 4 objects on a plain canvas
    assert truth["unasked"] == 0.0  # a rendered ground-truth scene draws only what its prompt names
    drawn = report.split("## What the images draw (test)", 1)[1]
    for name, d in res["drawn"].items():
        assert f"| {name} | {d['objects']:.2f} | {d['unasked']:.2f} | {100 * d['ink']:.1f} |" in drawn
    accuracy = report.split("## Accuracy per category (test)", 1)[1].split("##", 1)[0]
    assert "| overall | strict |" in accuracy
    for name, table in res["test"].items():
        assert table["strict"] <= table["overall"]
        assert f"| {100 * table['overall']:.1f} | {100 * table['strict']:.1f} |" in accuracy
    # every prompt's verdict is kept, and it is the evaluator's on the image that was scored
    for name, table in res["test"].items():
        assert len(table["correct"]) == 12 and sum(table["correct"]) / 12 == pytest.approx(table["overall"])
        assert table["drawn"] == res["drawn"][name]
    # the share of the canvas drawn after every round, next to the ground truth of the validation prompts
    assert [r for r, _ in res["val_drawn"]["srum"]] == [-1, 0, 1]
    assert res["val_drawn"]["srum"][0] == res["val_drawn"]["sft"][0]
    val = subsample(load_split_prompts("configs/prompts/shapes/val.jsonl"), 6)
    assert res["val_drawn_ground_truth"] == pytest.approx(drawn_objects(ground_truth_images(val, 3))["ink"])
    rounds = report.split("## Validation after each round", 1)[1].split("##", 1)[0]
    assert "| arm | base | after round 0 | after round 1 |" in rounds
    assert "| srum drawn | " + " | ".join(f"{100 * ink:.1f}" for _, ink in res["val_drawn"]["srum"]) + " |" in rounds
    assert "| sft accuracy | " + " | ".join(f"{100 * a:.1f}" for _, a in res["val_curves"]["sft"]) + " |" in rounds
    assert all(f"Drift warning: {w}" in rounds for w in res["warnings"])
    assert res["warnings"] or "No round's weights drew more than" in rounds
    for name in ("accuracy_per_round.png", "drawn_per_round.png", "reward_maps_round_first.png", "reward_maps_round_last.png", "test_images.png"):
        assert Image.open(out / name).size[0] > 100
    # the SFT arm really trained with the plain flow loss, the SRUM arm with rewards
    for arm, ablation in (("sft", "sft"), ("srum", "none")):
        cfg = (tmp_path / "demo" / res["runs"][arm].split("/")[-1] / "config.yaml").read_text()
        assert f"ablation: {ablation}" in cfg


def test_a_bad_scoring_guidance_is_named_as_the_flag_it_came_from(tmp_path, capsys):
    from srum_ray.config.load import ConfigError

    with pytest.raises(ConfigError, match=r"^--eval-guidance -2.0: generation.guidance_scale = -2.0 is out of range"):
        scoring_config("configs/shapes.yaml", [], -2.0)
    # an error in the overrides stays theirs, even with a scoring guidance given
    with pytest.raises(ConfigError, match=r"^train.lr"):
        scoring_config("configs/shapes.yaml", ["train.lr=-1"], 2.0)
    assert scoring_config("configs/shapes.yaml", [], 1.5).generation.guidance_scale == 1.5
    # the sweep and the scan say it as a usage error, before anything runs
    for main in (results_mod.main, _scan_module().main):
        argv = ["--eval-guidance", "-1", "--out", str(tmp_path / "out")]
        with pytest.raises(SystemExit):
            main(argv + (["--name", "x", "--arm", "base"] if main is not results_mod.main else []))
        assert "error: --eval-guidance -1.0: generation.guidance_scale = -1.0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_without_overlays_still_writes_its_report(checkpoint, tmp_path):
    # output.overlays off (configs/shapes_select.yaml): no round overview to copy, the report says so
    over = [*tiny_overrides(checkpoint), "run.rounds=1", "output.overlays=false"]
    out = run_demo("configs/shapes.yaml", over, arms=("srum",), seed=1, n_val=2, n_test=4,
                   out=tmp_path / "demo", progress=lambda m: None)
    assert set(json.loads((out / "results.json").read_text())["test"]) == {"base", "srum"}
    assert "no reward-map pictures" in (out / "report.md").read_text()
    assert not list(out.glob("reward_maps_round_*.png")) and (out / "test_images.png").is_file()


def test_drift_warning_flags_an_arm_beyond_the_ratio_either_way():
    base = (-1, 0.19)
    assert drift_warning("sft", [base, (0, 0.20), (1, 0.19 * DRIFT_RATIO * 0.99)]) is None
    up = drift_warning("srum", [base, (0, 0.21), (1, 0.30), (2, 0.36)])
    # one line per arm: the first round beyond the ratio and the last round
    assert up is not None and "30.0% of the canvas after round 1 and 36.0% after round 2" in up
    assert "19.0% for the base" in up and "blown up" in up
    down = drift_warning("sft", [base, (0, 0.05), (1, 0.2)])
    assert down is not None and "after round 0" in down and "fading away" in down
    assert drift_warning("sft", [(-1, 0.0), (0, 0.0)]) is None
    assert drift_warning("sft", [(-1, 0.0), (0, 0.1)]) is not None


def test_ground_truth_images_satisfy_their_prompts_and_are_deterministic():
    test = subsample(load_split_prompts("configs/prompts/shapes/test.jsonl"), 30)
    images = ground_truth_images(test, 0)
    assert len(images) == 30
    assert evaluate([p.spec for p in test], images).overall >= 0.95  # the evaluator's validation bar is 98% at scale
    again, other = ground_truth_images(test, 0), ground_truth_images(test, 1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    assert any(a.tobytes() != b.tobytes() for a, b in zip(images, other))


def test_arm_overrides_and_subsample():
    assert "reward.ablation=none" in arm_overrides("srum", 1, "x")
    assert "reward.ablation=binarized" in arm_overrides("binarized", 1, "x")
    with pytest.raises(ValueError, match="unknown demo arm 'dpo'"):
        arm_overrides("dpo", 0, "x")
    test = load_split_prompts("configs/prompts/shapes/test.jsonl")
    picked = subsample(test, 60)
    assert len(picked) == 60 and len({p.spec.category for p in picked}) == 6
    assert sum(p.unseen for p in picked) == 30


def test_results_sweep_writes_mean_and_spread(checkpoint, tmp_path, capsys):
    doc = tmp_path / "RESULTS.md"
    argv = ["--seeds", "0", "1", "--arms", "sft,srum,no_global", "--out", str(tmp_path / "sweep"), "--doc", str(doc),
            "--val-prompts", "6", "--test-prompts", "12", *tiny_overrides(checkpoint)]
    assert results_mod.main(argv) == 0
    text = doc.read_text()
    per_seed = [json.loads((tmp_path / "sweep" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    m, sd = results_mod.mean_sd([r["test"]["srum"]["overall"] for r in per_seed])
    assert f"| srum | " in text and f"{100 * m:.1f} ± {100 * sd:.1f}" in text
    assert "Ranking found" in text and "SRUM - SFT" in text
    assert "paper: dropping the global reward" not in text  # no_constraint was not run
    assert "paper: full SRUM is best" in text
    # a finished seed is read back, not rerun
    mtime = (tmp_path / "sweep" / "seed0" / "results.json").stat().st_mtime
    assert results_mod.main(argv) == 0
    assert (tmp_path / "sweep" / "seed0" / "results.json").stat().st_mtime == mtime
    # ... unless it was scored at another guidance scale than the sweep asks for: an error, not a mix
    with pytest.raises(SystemExit):
        results_mod.main([*argv, "--eval-guidance", "1.5"])
    assert json.loads((tmp_path / "sweep" / "seed0" / "results.json").read_text())["guidance"]["scoring"] == 3.0
    # a results.json from before the scale was recorded: read from its arms' run configs (the
    # rollouts' scale, which such demos scored at) ...
    path = tmp_path / "sweep" / "seed0" / "results.json"
    old = json.loads(path.read_text())
    del old["guidance"]
    path.write_text(json.dumps(old))
    assert results_mod.scored_guidance(old) == 3.0
    assert results_mod.main(argv) == 0
    with pytest.raises(SystemExit):
        results_mod.main([*argv, "--eval-guidance", "1.5"])
    # ... and with those gone as well, an error rather than a guess
    old["runs"] = {arm: str(tmp_path / "gone" / arm) for arm in old["runs"]}
    path.write_text(json.dumps(old))
    assert results_mod.scored_guidance(old) is None
    with pytest.raises(SystemExit):
        results_mod.main(argv)
    assert "does not say what guidance" in capsys.readouterr().err


def _scan_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("shapes_scan", "scripts/shapes_scan.py")
    scan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scan)
    return scan


def test_scan_script_scores_an_arm_and_the_base(checkpoint, tmp_path):
    scan = _scan_module()
    common = ["--seed", "3", "--test-prompts", "8", "--out", str(tmp_path / "scan")]
    # overrides split by a flag are all read as overrides (argparse's plain parse refuses the second part)
    over = tiny_overrides(checkpoint)
    base = scan.main(["--name", "b", "--arm", "base", *over[:1], "--eval-guidance", "1.0", *over[1:], *common])
    arm = scan.main(["--name", "s", "--score-every", "1", *common, *tiny_overrides(checkpoint)])
    lines = [json.loads(x) for x in (tmp_path / "scan" / "scan.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == ["b", "s"]
    assert base["run_dir"] is None and base["global_score_per_round"] == []
    # --eval-guidance overrides the scoring only; without it the config's (3.0 in shapes.yaml)
    assert base["eval_guidance"] == 1.0 and arm["eval_guidance"] == 3.0
    assert arm["n_test"] == 8 and 0.0 <= arm["accuracy"]["overall"] <= 100.0
    # the arm really ran its two rounds and left its weights
    assert len(arm["global_score_per_round"]) == 2
    assert (tmp_path / "scan" / "s").is_dir()
    # --score-every 1: both rounds' checkpoints scored, the last one being the line's own score
    assert [p["round"] for p in arm["per_round"]] == [0, 1] and base["per_round"] == []
    assert arm["per_round"][-1]["accuracy"] == arm["accuracy"]
    ev = scan.Evaluator(scan.load_config("configs/shapes.yaml", ["runtime.mode=local", *tiny_overrides(checkpoint)]), 3)
    ev.load(scan.checkpoint_state(Path(arm["run_dir"]), 0))
    prompts = scan.subsample(scan.load_split_prompts(scan.PROMPT_DIR / "test.jsonl"), 8)
    assert scan.score_summary(ev.score(prompts)[0]) == {k: v for k, v in arm["per_round"][0].items() if k != "round"}
    with pytest.raises(SystemExit):
        scan.main(["--name", "x", "--score-every", "-1", "--out", str(tmp_path / "scan")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_evaluator_builds_on_the_runs_device(checkpoint):
    """The scoring runs where the rounds run (run.device), so a cuda config without CUDA stops
    with the same one-line error as the rounds, before any image is drawn."""
    from srum_ray.config.load import load_config
    from srum_ray.shapes.demo import Evaluator

    cfg = load_config("configs/shapes.yaml", [*tiny_overrides(checkpoint), "run.device=cuda"])
    with pytest.raises(RuntimeError, match="run.device is cuda but torch sees no CUDA device"):
        Evaluator(cfg, 0)
    cpu = Evaluator(load_config("configs/shapes.yaml", tiny_overrides(checkpoint)), 0)
    assert next(cpu.generator.trainable_module().parameters()).device.type == "cpu"


def test_scan_script_oracle_filter_drops_wrong_samples(checkpoint, tmp_path):
    """Through scripts/shapes_scan.py and RoundLoop's reward_fn: the filter oracle drops every
    sample the exact evaluator finds wrong, and says so in samples.jsonl."""
    scan = _scan_module()
    line = scan.main(["--name", "o", "--oracle", "filter", "--test-prompts", "4", "--out", str(tmp_path / "scan"),
                      *tiny_overrides(checkpoint), "run.rounds=1"])
    assert line["oracle"] == "filter"
    samples = tmp_path / "scan" / "o"
    recs = [json.loads(x) for p in samples.rglob("samples.jsonl") for x in p.read_text().splitlines()]
    assert len(recs) == 6
    for r in recs:
        assert r["reward_stats"]["oracle_correct"] in (0.0, 1.0)
        assert r["trained"] == (r["reward_stats"]["oracle_correct"] == 1.0)
    with pytest.raises(SystemExit):
        scan.main(["--name", "x", "--arm", "base", "--oracle", "binary", "--out", str(tmp_path / "scan")])


def test_scan_script_scores_given_generator_weights(checkpoint, tmp_path):
    """--arm base --generator FILE loads those weights (strictly) instead of the checkpoint's."""
    scan = _scan_module()
    common = ["--arm", "base", "--test-prompts", "4", "--out", str(tmp_path / "scan"), *tiny_overrides(checkpoint)]
    line = scan.main(["--name", "g", "--generator", str(checkpoint / "generator.safetensors"), *common])
    assert line["generator"] == str(checkpoint / "generator.safetensors") and line["n_test"] == 4
    other = tmp_path / "other"
    wider = ShapesNetConfig(width=48, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2, conv_channels=(4, 8, 8))
    ShapesGenerator(wider, GenerationConfig(), seed=1).save_pretrained(other)
    with pytest.raises(RuntimeError, match="size mismatch"):
        scan.main(["--name", "w", "--generator", str(other / "generator.safetensors"), *common])
    with pytest.raises(SystemExit):  # a missing file is refused before anything is built
        scan.main(["--name", "m", "--generator", str(tmp_path / "nope.safetensors"), *common])
    with pytest.raises(SystemExit):  # weights to score, not an arm to train
        scan.main(["--name", "s", "--arm", "srum", "--generator", str(checkpoint / "generator.safetensors")])
