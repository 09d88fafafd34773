"""TransformersUnderstanding on tiny random checkpoints of each family, saved and reloaded
through the loading code real checkpoints use; one full SRUM round per family."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from srum_ray.config.load import load_config
from srum_ray.config.schema import (
    GenerationConfig,
    ModelConfig,
    TinyModelConfig,
    UnderstandingModelConfig,
)
from srum_ray.grounding import build_grounder
from srum_ray.judging.filter import BoxFilter
from srum_ray.judging.judge import Judge
from srum_ray.learner import build_engine
from srum_ray.loop import RoundLoop
from srum_ray.models.base import AnswerConstraint
from srum_ray.models.constraints import is_complete_score
from srum_ray.models.tiny import TinyGenerator
from srum_ray.models.transformers_judge import (
    TransformersUnderstanding,
    build_transformers_understanding,
    choice_token_map,
    fit_image,
)
from srum_ray.rundir import RunDir
from srum_ray.runtime.local import Roles
from srum_ray.types import Box

from ._tiny_vlms import FAMILIES, save_tiny_vlm

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "Score the layout from -1 to 1.",
    "What object is in region 2?",
    "Is there a red cube left of a ball? Answer yes or no.",
]
UCFG = UnderstandingModelConfig(image_max_side=64)


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    before = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {fam: save_tiny_vlm(fam, root / fam) for fam in FAMILIES}


@pytest.fixture(scope="module")
def judges(checkpoints):
    return {fam: TransformersUnderstanding.from_pretrained(p, UCFG) for fam, p in checkpoints.items()}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 80), (100, 50)]  # (h, w): the last two are downscaled
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_family_with_auto_classes(judges, family):
    j = judges[family]
    assert j.family.name == family
    assert j.model.config.model_type == family
    assert not any(p.requires_grad for p in j.model.parameters())
    assert j.tokenizer.padding_side == "left"
    # processors needing a video processor (torchvision) were assembled image-only
    expected = j.family.processor_class + ("ImageOnly" if j.family.has_video else "")
    assert type(j.processor).__name__ == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_batched_deterministic(judges, images, family):
    j = judges[family]
    got = j.answer(images, PROMPTS, max_new_tokens=6)
    assert len(got) == 3 and all(isinstance(a, str) for a in got)
    assert j.answer(images, PROMPTS, max_new_tokens=6) == got
    # left padding: a greedy answer does not depend on its batch neighbours
    assert [j.answer([im], [p], max_new_tokens=6)[0] for im, p in zip(images, PROMPTS)] == got
    assert j.answer([], [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="3 images but 1 prompts"):
        j.answer(images, PROMPTS[:1], max_new_tokens=4)
    sampled = j.answer(images, PROMPTS, max_new_tokens=6, temperature=1.0, seed=4)
    assert j.answer(images, PROMPTS, max_new_tokens=6, temperature=1.0, seed=4) == sampled


@pytest.mark.parametrize("family", FAMILIES)
def test_constraints(judges, images, family):
    j = judges[family]
    numbers = j.answer(images, PROMPTS, max_new_tokens=8, constraint=AnswerConstraint("number"))
    assert all(is_complete_score(n) and -1.0 <= float(n) <= 1.0 for n in numbers), numbers
    choices = ("yes", "no")
    got = j.answer(images, PROMPTS, max_new_tokens=8, constraint=AnswerConstraint("choice", choices))
    # by hand: argmax of the next-token logits over the choices' first tokens
    firsts = choice_token_map(j.tokenizer, choices)
    with torch.no_grad():
        logits = j.model(**j._inputs(images, PROMPTS)).logits[:, -1]
    ids = list(firsts)
    expect = [choices[firsts[ids[int(row[ids].argmax())]]] for row in logits]
    assert got == expect


def test_choice_tokens_cover_both_spellings_and_reject_clashes(judges):
    tok = judges["qwen2_5_vl"].tokenizer
    firsts = choice_token_map(tok, ("yes", "no"))
    for word, k in (("yes", 0), ("no", 1)):
        assert firsts[tok.encode(word, add_special_tokens=False)[0]] == k
        assert firsts[tok.encode(" " + word, add_special_tokens=False)[0]] == k
    with pytest.raises(ValueError, match="share a first token"):
        choice_token_map(tok, ("a cat", "a dog"))
    with pytest.raises(ValueError, match="at least one choice"):
        choice_token_map(tok, ())


def test_fit_image_keeps_aspect():
    big = Image.new("L", (200, 100))
    assert fit_image(big, 64).size == (64, 32) and fit_image(big, 64).mode == "RGB"
    assert fit_image(Image.new("RGB", (40, 20)), 64).size == (40, 20)


@pytest.mark.parametrize("family", FAMILIES)
def test_ground_returns_boxes_inside_the_image(judges, images, family):
    found = judges[family].ground(images, ["a red cube and a ball"] * 3)
    assert len(found) == 3
    for boxes, im in zip(found, images):
        for b in boxes:  # a random model may find nothing; whatever it finds is in the image
            assert 0 <= b.x0 < b.x1 <= im.width and 0 <= b.y0 < b.y1 <= im.height


def test_qwen_grounding_coordinates(judges, images):
    q25, q3 = judges["qwen2_5_vl"], judges["qwen3_vl"]
    # images are first fitted to a longest side of 64 (80x48 -> 64x38, 50x100 -> 32x64),
    # then 8 px patches merged 2x2 round each side to the nearest multiple of 16 (38 -> 32)
    assert q25.processor_sizes(images) == [(64, 64), (64, 32), (32, 64)]
    text = 'Here: [{"bbox_2d": [14, 7, 42, 21], "label": "cat"}, {"bbox_2d": [0, 0, 56, 28]}]'
    # Qwen2.5-VL: pixels of the 56 x 28 processed image, mapped onto 200 x 100
    assert q25.boxes_from_text(text, (200, 100), (56, 28)) == [Box(50, 25, 150, 75), Box(0, 0, 200, 100)]
    # Qwen3-VL: 0..1000 normalized whatever the processed size
    assert q3.boxes_from_text('[{"bbox_2d": [250, 500, 750, 1000]}]', (200, 100), (56, 28)) == [
        Box(50, 50, 150, 100)
    ]
    assert q25.boxes_from_text("no boxes here", (200, 100), (56, 28)) == []


def test_shared_text_encoder_is_one_copy_and_answers_alike(judges):
    loaded = judges["qwen2_5_vl"]
    generator_tok = copy.deepcopy(loaded.tokenizer)
    generator_tok.padding_side = "right"  # as a text encoder's prompt encoding may pad
    shared = TransformersUnderstanding.from_text_encoder(loaded.model, generator_tok, UCFG)
    assert shared.model is loaded.model
    assert generator_tok.padding_side == "right" and shared.tokenizer is not generator_tok
    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    # same template text and same processed size (64 x 64 is inside both pixel ranges)
    expect = loaded.answer(ims, PROMPTS[:2], max_new_tokens=5)
    assert shared.answer(ims, PROMPTS[:2], max_new_tokens=5) == expect
    with pytest.raises(ValueError, match="Qwen2_5_VLForConditionalGeneration.*got Linear"):
        TransformersUnderstanding.from_text_encoder(torch.nn.Linear(2, 2), loaded.tokenizer)


def test_loading_errors_are_one_line_and_name_the_path(checkpoints, tmp_path):
    def err(path, family="auto", exc=(FileNotFoundError, ValueError)):
        with pytest.raises(exc) as info:
            TransformersUnderstanding.from_pretrained(path, UnderstandingModelConfig(family=family))
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg
        return msg

    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in err(tmp_path / "empty")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama/config.json").write_text(json.dumps({"model_type": "llama"}))
    msg = err(tmp_path / "llama")
    assert "unsupported" in msg and "'llama'" in msg
    assert "idefics3, llava_onevision, qwen2_5_vl, qwen3_vl, smolvlm" in msg
    assert "model_type 'idefics3'" in err(checkpoints["idefics3"], family="qwen3_vl")
    broken = tmp_path / "no_image_processor"
    shutil.copytree(checkpoints["qwen2_5_vl"], broken)
    (broken / "preprocessor_config.json").unlink()
    assert "cannot build Qwen2_5_VLProcessor" in err(broken)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(checkpoints["idefics3"], no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "cannot load model weights" in err(no_weights)


def test_a_missing_processor_package_is_named_before_loading(checkpoints, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "num2words" else real(name, *a))
    with pytest.raises(ImportError, match=r"smolvlm processor needs the num2words package.*srum-ray\[smolvlm\]"):
        TransformersUnderstanding.from_pretrained(checkpoints["smolvlm"], UCFG)
    assert TransformersUnderstanding.from_pretrained(checkpoints["idefics3"], UCFG).family.name == "idefics3"


def test_builder_needs_a_path_or_a_shared_encoder(checkpoints):
    cfg = ModelConfig(backend="diffusers")
    with pytest.raises(ValueError, match="model.understanding.path is not set"):
        build_transformers_understanding(cfg)
    cfg.understanding.share_with_generator = True
    with pytest.raises(ValueError, match="share_with_generator"):
        build_transformers_understanding(cfg)
    cfg = ModelConfig(backend="diffusers")
    cfg.understanding.path = str(checkpoints["idefics3"])
    assert build_transformers_understanding(cfg).family.name == "idefics3"


@pytest.mark.parametrize(
    "family, grounder", [(f, "sam") for f in FAMILIES] + [("qwen2_5_vl", "model")]
)
def test_full_tiny_round(judges, family, grounder, tmp_path):
    """generate, propose (tiny SAM, or the judge's native grounding), judge every box
    (filter off, so the regional path runs), reward, train, sync: one round on disk."""
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"run.output_dir={tmp_path}", "run.progress=false", "run.rounds=1",
            f"data.prompts=[{ROOT / 'configs/prompts/tiny.txt'}]", "data.prompts_per_round=2",
            "generation.num_inference_steps=2", "generation.batch_size=2",
            "train.steps_per_round=1", "train.batch_size=2", "judge.answer_mode=guided",
            f"grounder.kind={grounder}", "filter.enabled=false",
        ],
    )
    judge_model = judges[family]
    gen_cfg = GenerationConfig(num_inference_steps=2, shift=3.0, batch_size=2)
    generator = TinyGenerator(TinyModelConfig(), gen_cfg)
    roles = Roles(
        generator=generator,
        grounder=build_grounder(cfg.grounder, understanding=judge_model),
        box_filter=BoxFilter(judge_model, cfg.filter, batch_size=cfg.judge.batch_size),
        judge=Judge(judge_model, cfg.judge, seed=cfg.run.seed),
        engine=build_engine(generator, cfg.train, seed=cfg.run.seed, dtype=cfg.run.dtype),
    )
    rd = RunDir.create(cfg)
    RoundLoop(cfg, rd, roles=roles).run()
    assert rd.state()["last_completed_round"] == 0
    recs = [json.loads(l) for l in (rd.round_dir(0) / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for rec in recs:
        assert (rd.round_dir(0) / rec["image"]).is_file()
        assert rec["judge_raw"]["global"]
        assert rec["parse"]["global"] in {"parsed", "retried", "missing"}
        n = len(rec["boxes"])
        assert len(rec["parse"]["regions"]) == len(rec["kept"]) == len(rec["region_scores"]) == n
        if grounder == "sam":  # the tiny SAM always proposes; every box is judged
            assert n >= 1 and all(rec["kept"]) and len(rec["judge_raw"]["regions"]) >= 1
        for score, status in zip(rec["region_scores"], rec["parse"]["regions"]):
            assert (score is None) == (status == "missing") and status != "filtered"
    assert (rd.checkpoint_dir(0) / "trainable.safetensors").is_file()
