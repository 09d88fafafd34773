"""transformers' SAM as a grounder: a tiny SamModel saved and loaded back through the same
path a real checkpoint takes, automatic masks without torchvision."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srum_ray.config.load import load_config
from srum_ray.grounding import build_grounder
from srum_ray.grounding.hf_sam import HfSamGrounder, build_tiny_hf_sam, load_hf_sam

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfsam")
    model, processor = build_tiny_hf_sam(seed=0)
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


def blocky(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((16, 16, 1))).astype("uint8"))


def grounder_cfg(ckpt, *extra):
    return load_config(ROOT / "configs/tiny.yaml", ["grounder.kind=sam_hf", f"grounder.sam.checkpoint={ckpt}", *extra]).grounder


def test_loads_from_directory_and_proposes_boxes_inside_the_image(ckpt):
    g = build_grounder(grounder_cfg(ckpt))
    assert isinstance(g, HfSamGrounder)
    images = [blocky(0), blocky(1)]
    boxes = g.propose(images, ["a", "b"])
    assert len(boxes) == 2 and sum(len(b) for b in boxes) >= 1
    for bs, im in zip(boxes, images):
        assert len(bs) <= g.cfg.max_boxes
        for b in bs:
            assert 0 <= b.x0 < b.x1 <= im.width and 0 <= b.y0 < b.y1 <= im.height
    assert g.propose(images, ["a", "b"]) == boxes  # deterministic
    # the in-memory model and the reloaded one propose the same boxes
    model, processor = build_tiny_hf_sam(seed=0)
    same = HfSamGrounder(g.cfg, model=model, processor=processor)
    assert same.propose(images, ["a", "b"]) == boxes


def test_thresholds_filter_masks(ckpt):
    strict = build_grounder(grounder_cfg(ckpt, "grounder.sam.pred_iou_thresh=0.99", "grounder.sam.stability_score_thresh=0.99"))
    assert strict.propose([blocky(0)], ["a"]) == [[]]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_hf_sam(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing preprocessor_config.json"):
        load_hf_sam(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a loadable transformers SAM checkpoint"):
        load_hf_sam(tmp_path)


def test_runs_without_torchvision(ckpt):
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from srum_ray.config.load import load_config\n"
        "from srum_ray.grounding import build_grounder\n"
        f"cfg = load_config('configs/tiny.yaml', ['grounder.kind=sam_hf', 'grounder.sam.checkpoint={ckpt}']).grounder\n"
        "print(len(build_grounder(cfg).propose([Image.new('RGB', (64, 64), 'red')], ['x'])))\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
