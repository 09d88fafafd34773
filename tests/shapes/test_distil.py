"""Best-of-K distillation (srum_ray.shapes.distil): pick rules, the fine-tune, the command."""

from __future__ import annotations

import json
import random

import pytest
import torch

from srum_ray.config.schema import GenerationConfig
from srum_ray.losses import noisy_latents, velocity_target
from srum_ray.models.shapes_umm import ShapesGenerator, ShapesNetConfig
from srum_ray.models.shapes_understanding import ShapesUnderstanding
from srum_ray.shapes import sampler
from srum_ray.shapes.demo import PROMPT_DIR
from srum_ray.shapes.distil import finetune, main, picked
from srum_ray.shapes.render import render
from srum_ray.shapes.splits import load_split_prompts

SMALL = ShapesNetConfig(width=32, depth=1, heads=2, judge_width=32, judge_depth=1, judge_heads=2, conv_channels=(4, 8, 8))


def test_pick_rules():
    per_prompt = [
        {"correct": [False, True, True], "scores": [0.1, 0.9, 0.5], "judge_pick": 1},
        {"correct": [False, False, False], "scores": [0.6, None, 0.2], "judge_pick": 0},  # best score below 0.75
        {"correct": [True, False, False], "scores": [None, None, None], "judge_pick": 0},  # nothing read
    ]
    assert picked(per_prompt, 3, "first") == [0, 3, 6]
    assert picked(per_prompt, 3, "oracle") == [1, 2, 6]
    assert picked(per_prompt, 3, "judge") == [1]
    assert picked(per_prompt, 3, "judge", min_score=0.5) == [1, 3]
    with pytest.raises(ValueError, match="unknown pick rule 'best'"):
        picked(per_prompt, 3, "best")


def _fixed_loss(gen, texts, images) -> float:
    x0 = gen.encode_images(images)
    g = torch.Generator().manual_seed(0)
    eps, t = torch.randn(x0.shape, generator=g), torch.rand(len(texts), generator=g)
    with torch.no_grad():
        v = gen.predict_velocity(noisy_latents(x0, eps, t), t, gen.encode_prompts(texts))
    return float(((v - velocity_target(x0, eps)) ** 2).mean())


def test_finetune_fits_the_picked_images():
    gen = ShapesGenerator(SMALL, GenerationConfig(), seed=1)
    rng = random.Random(3)
    specs = [p.spec for p in load_split_prompts(PROMPT_DIR / "val.jsonl")[:4]]
    texts = [s.text for s in specs]
    images = [render(sampler.scene_for(s, rng)) for s in specs]
    before = _fixed_loss(gen, texts, images)
    losses = finetune(gen, texts, images, steps=30, lr=3e-3, batch=4, timestep_shift=1.0)
    assert len(losses) == 30
    assert _fixed_loss(gen, texts, images) < 0.8 * before
    assert not gen.trainable_module().training
    with pytest.raises(ValueError, match="no image was picked"):
        finetune(gen, [], [], steps=1, lr=1e-3, batch=1, timestep_shift=1.0)


def test_command_writes_one_line_per_pick(tmp_path):
    root = tmp_path / "ckpt"
    ShapesGenerator(SMALL, GenerationConfig(), seed=1).save_pretrained(root)
    ShapesUnderstanding(SMALL, seed=2).save_pretrained(root)
    out = tmp_path / "distil"
    lines = main(["--prompts", "3", "--k", "2", "--steps", "2", "--batch", "2", "--picks", "first,judge",
                  "--min-score", "2.0", "--out", str(out), f"model.checkpoint={root}", "generation.num_inference_steps=2"])
    written = [json.loads(x) for x in (out / "distil.jsonl").read_text().splitlines()]
    assert written == lines and [ln["pick"] for ln in lines] == ["first", "judge"]
    first, judge = lines
    assert first["images"] == 3 and first["after"] is not None and set(first["after"]) == {"train", "other"}
    assert first["loss_first"] > 0
    # no global score reaches 2.0: nothing is picked, nothing trained, nothing lost
    assert judge["images"] == 0 and judge["after"] is None and judge["before"] == first["before"]


def test_command_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["--picks", "judge,best", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--steps", "0", "--out", str(tmp_path)])


def _line(pick, seed, before, after, k=8, steps=300):
    return {"pick": pick, "seed": seed, "k": k, "prompts": 150, "images": 10, "right": 5, "steps": steps, "lr": 3e-4,
            "batch": 16, "min_score": 0.75, "before": {"train": before[0], "other": before[1]},
            "after": None if after is None else {"train": after[0], "other": after[1]}}


def test_summary_over_seeds(tmp_path, capsys):
    lines = [_line("oracle", 0, (4.0, 7.3), (8.7, 8.0)), _line("oracle", 1, (8.0, 7.3), (11.3, 8.7)),
             _line("first", 0, (4.0, 7.3), (2.0, 4.0)), _line("judge", 0, (4.0, 7.3), None),
             _line("oracle", 0, (4.0, 7.3), (0.0, 0.0), steps=100)]  # another setting: left out
    path = tmp_path / "distil.jsonl"
    path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    got = main(["--summary", str(path), "--steps", "300", "--lr", "3e-4", "--batch", "16", "--k", "8"])
    assert got == lines[:4]
    table = capsys.readouterr().out
    # oracle: +4.7 and +3.3 on the same prompts -> +4.0 ± 1.0; +0.7 and +1.4 on the others -> +1.05 ± 0.5
    assert "| oracle | +4.0 ± 1.0 | +1.0 ± 0.5 |" in table
    assert "| first | -2.0 ± 0.0 | -3.3 ± 0.0 |" in table
    assert "| judge | 0 | 10 (5) | 4.0 -> (not trained) |" in table and "| judge | +" not in table
    with pytest.raises(ValueError, match="no run with k=8, steps=50"):
        main(["--summary", str(path), "--steps", "50"])
    with pytest.raises(SystemExit):
        main(["--summary", str(tmp_path / "missing.jsonl")])
