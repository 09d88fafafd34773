"""Configs: every shipped YAML loads; bad keys and values are rejected with the key path."""

from pathlib import Path

import pytest
import yaml

from srum_ray.config.load import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from srum_ray.config.schema import SrumConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in SHIPPED}
    assert {"tiny.yaml", "paper.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, SrumConfig)
    # the resolved config round-trips
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_ablation_presets_flip_one_switch():
    for path in (ROOT / "configs/ablations").glob("*.yaml"):
        # shapes_<ablation>.yaml starts from shapes.yaml, <ablation>.yaml from tiny.yaml
        shapes = path.stem.startswith("shapes_")
        ablation = path.stem.removeprefix("shapes_")
        base = config_to_dict(load_config(ROOT / ("configs/shapes.yaml" if shapes else "configs/tiny.yaml")))
        cfg = config_to_dict(load_config(path))
        assert cfg["reward"]["ablation"] == ablation
        diff = {
            (sec, k)
            for sec in base
            for k in base[sec]
            if base[sec][k] != cfg[sec][k]
        }
        assert diff == {("reward", "ablation"), ("run", "name")}


def test_defaults_and_spec_recipe():
    cfg = load_config(None)
    assert cfg.train.betas == [0.9, 0.95]
    assert cfg.train.eps == 1e-15
    assert cfg.train.lr == 2.5e-5 and cfg.train.warmup_steps == 500
    assert cfg.train.lambda_c == 0.5 and cfg.train.grad_clip == 1.0
    assert cfg.train.weight_decay == 0.0 and cfg.train.timestep_shift == 4.0
    assert cfg.grounder.max_boxes == 10
    assert cfg.judge.on_missing_region == "drop_region"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown key train.lrr (allowed: engine, zero_stage, grad_accum_steps, steps_per_round"),
        ("nope=1", "unknown key nope"),
        ("grounder.sam.kind=x", "unknown key grounder.sam.kind"),
        ("reward.convention=paperish", "reward.convention = 'paperish' is not allowed (allowed: paper, public_code)"),
        ("reward.overlap=sum", "allowed: default, max, mean, min, last"),
        ("train.lr=0", "train.lr = 0.0 is out of range (allowed: > 0.0 and <= 1.0)"),
        ("judge.max_retries=11", "judge.max_retries = 11 is out of range (allowed: >= 0 and <= 10)"),
        ("run.rounds=two", "run.rounds = 'two' must be an integer"),
        ("train.betas=[0.9]", "train.betas must have 2 items"),
        ("train.betas=[0.9,1.5]", "train.betas[1] = 1.5 is out of range"),
        ("filter.enabled=maybe", "filter.enabled = 'maybe' must be true or false"),
        ("train=3", "train must be a mapping"),
        ("model.tiny.image_size=48", "allowed: 32, 64, 128"),
        ("noequals", "must look like key.path=value"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/tiny.yaml", [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        ["train.lr=3e-4", "run.rounds=5", "filter.enabled=false", "data.prompts=[a.txt, b.txt]"],
    )
    assert cfg.train.lr == 3e-4 and cfg.run.rounds == 5 and cfg.filter.enabled is False
    assert cfg.data.prompts == ["a.txt", "b.txt"]
    # overrides create missing intermediate mappings
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    cyc = tmp_path / "cyc.yaml"
    cyc.write_text("defaults: [cyc.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(cyc)


def test_defaults_chain_merges_deeply(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.001, steps_per_round: 7}\n")
    (tmp_path / "child.yaml").write_text("defaults: [base.yaml]\ntrain: {lr: 0.002}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.lr == 0.002 and cfg.train.steps_per_round == 7


def test_dump_is_safe_yaml(tmp_path):
    cfg = load_config(ROOT / "configs/tiny.yaml", ["train.lr=5e-5"])
    dump_config(cfg, tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["train"]["lr"] == 5e-5
    assert load_config(tmp_path / "c.yaml") == cfg


def test_model_presets_name_a_family_and_leave_paths_to_the_user():
    presets = sorted((ROOT / "configs/models").glob("*.yaml"))
    assert len(presets) >= 5
    gen_families, judge_families = set(), set()
    for path in presets:
        cfg = load_config(path)
        assert cfg.model.backend == "diffusers"
        assert cfg.model.generator.path is None and cfg.model.understanding.path is None
        assert cfg.train.betas == [0.9, 0.95] and cfg.train.lambda_c == 0.5  # the SPEC recipe
        gen_families.add(cfg.model.generator.family)
        judge_families.add("shared" if cfg.model.understanding.share_with_generator else cfg.model.understanding.family)
    assert gen_families == {"sd3", "flux", "sana", "qwen_image"}
    assert {"qwen2_5_vl", "qwen3_vl", "llava_onevision", "idefics3", "shared"} <= judge_families
