"""The `diffusers` backend end to end through the registry and the CLI: a saved tiny diffusers
pipeline as generator and a saved tiny transformers VLM as judge, loaded from their
directories by config, one SRUM round; and Qwen-Image judging with its own text encoder."""

import importlib.util
import json
from pathlib import Path

import pytest

from srum_ray.cli import main
from srum_ray.models.registry import build_model
from srum_ray.config.load import load_config
from tests.models._tiny_pipelines import save_tiny_pipeline
from tests.models._tiny_vlms import save_tiny_vlm

ROOT = Path(__file__).resolve().parents[2]


def overrides(tmp_path, gen, judge=None, share=False):
    out = [
        "model.backend=diffusers", f"model.generator.path={gen}", "model.generator.resolution=32",
        "model.generator.max_sequence_length=16", "generation.num_inference_steps=2",
        "run.rounds=1", "data.prompts_per_round=2", "train.batch_size=2", "train.steps_per_round=1",
        "filter.enabled=false", f"run.output_dir={tmp_path / 'runs'}", "run.progress=false",
        f"data.prompts=[{ROOT / 'configs/prompts/tiny.txt'}]",
    ]
    if share:
        out.append("model.understanding.share_with_generator=true")
    else:
        out.append(f"model.understanding.path={judge}")
    return out


def test_sd3_with_llava_onevision_judge_runs_from_config(tmp_path, capsys):
    gen, judge = tmp_path / "sd3", tmp_path / "judge"
    save_tiny_pipeline("sd3", gen)
    save_tiny_vlm("llava_onevision", judge)
    assert main(["run", "--config", str(ROOT / "configs/tiny.yaml"), *overrides(tmp_path, gen, judge)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    recs = [json.loads(l) for l in (run_dir / "rounds/0000/samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["weights_version"] == 0 and r["judge_raw"]["global"] for r in recs)
    assert (run_dir / "checkpoints/0000/trainable.safetensors").is_file()
    assert json.loads((run_dir / "state.json").read_text())["weights_version"] == 1


def test_qwen_image_judges_with_its_own_text_encoder(tmp_path):
    gen = tmp_path / "qwen"
    save_tiny_pipeline("qwen_image", gen)
    cfg = load_config(ROOT / "configs/tiny.yaml", overrides(tmp_path, gen, share=True))
    model = build_model(cfg.model, cfg.generation)
    assert model.understanding.model is model.generator.pipe.text_encoder  # one copy in memory
    judge_only = build_model(cfg.model, cfg.generation, parts=("understanding",))
    assert judge_only.generator is None and judge_only.understanding is not None


def test_missing_paths_stop_before_loading(tmp_path, capsys):
    assert main(["check", "--config", str(ROOT / "configs/tiny.yaml"),
                 *overrides(tmp_path, tmp_path / "nope", tmp_path / "nope2")]) == 2
    err = capsys.readouterr().err
    assert "incomplete diffusers pipeline checkpoint" in err or "not found" in err
    assert str(tmp_path / "nope") in err


def test_judge_family_problems_stop_before_loading(tmp_path, capsys, monkeypatch):
    """`srum-ray check` reads the judge's config.json: an unsupported model type, a family
    that disagrees with it, or a package its processor needs, each fail in one line."""
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "model_index.json").write_text("{}")  # only its presence is checked here
    judge = tmp_path / "judge"
    judge.mkdir()

    def check(*extra):
        code = main(["check", "--config", str(ROOT / "configs/tiny.yaml"), *overrides(tmp_path, gen, judge), *extra])
        return code, capsys.readouterr().err

    (judge / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, err = check()
    assert code == 2 and "model.understanding: unsupported vision-language model_type 'llama'" in err
    (judge / "config.json").write_text(json.dumps({"model_type": "smolvlm"}))
    code, err = check("model.understanding.family=idefics3")
    assert code == 2 and "family is 'idefics3'" in err and "model_type 'smolvlm'" in err
    assert check()[0] == 0  # num2words is installed with the dev extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "num2words" else real(name, *a))
    code, err = check()
    assert code == 2 and "needs the num2words package" in err and "srum-ray[smolvlm]" in err
