"""Measurements of the shapes-world model: generation accuracy and understanding accuracy.

* Generation accuracy: one image per prompt (seed = a function of the prompt's index and the
  evaluation seed), scored by the exact evaluator (:mod:`srum_ray.shapes.evaluate`).
* Understanding accuracy: agreement of the understanding module's whole-image verdict
  (``Score >= 0.75`` means "the image is exactly right") with the truth, per category, on rendered scenes
  (half satisfy the prompt, half are wrong in one attribute; truth = how they were built) and on
  generated images (truth = the exact evaluator). The verdict is read through the judge's own
  question and parser, so this is what SRUM's judge sees.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from srum_ray.models.base import GenerationModel, UnderstandingModel
from srum_ray.shapes.constraints import CATEGORIES, PromptSpec
from srum_ray.shapes.evaluate import EvalReport, correct, evaluate
from srum_ray.shapes.render import render
from srum_ray.shapes.sampler import scene_for, wrong_scene_for
from srum_ray.shapes.splits import SplitPrompt


def eval_seeds(n: int, seed: int) -> list[int]:
    """Sampling seeds of an evaluation: prompt ``i`` gets ``seed * 1_000_003 + i``."""
    return [seed * 1_000_003 + i for i in range(n)]


#: prompts per generate call when a caller follows progress
PROGRESS_CHUNK = 32


def generate_for(
    generator: GenerationModel, specs: Sequence[PromptSpec], seed: int = 0, on_images: Callable[[int], None] | None = None,
) -> list[Image.Image]:
    """One image per prompt with the evaluation's seeds; ``on_images(n)`` (e.g. a progress
    bar's update) is called after every chunk of about :data:`PROGRESS_CHUNK` images. A chunk
    is a whole number of the generator's own batches (``generation.batch_size``), so the
    batches it draws, and so the images, are exactly those of one call for all prompts."""
    texts, seeds = [s.text for s in specs], eval_seeds(len(specs), seed)
    if on_images is None:
        return generator.generate(texts, seeds).images
    batch = int(getattr(getattr(generator, "gen_cfg", None), "batch_size", PROGRESS_CHUNK))
    chunk = batch * max(1, PROGRESS_CHUNK // batch)
    images: list[Image.Image] = []
    for start in range(0, len(texts), chunk):
        images += generator.generate(texts[start : start + chunk], seeds[start : start + chunk]).images
        on_images(len(images) - start)
    return images


def generation_report(
    generator: GenerationModel, specs: Sequence[PromptSpec], seed: int = 0, on_images: Callable[[int], None] | None = None,
) -> tuple[EvalReport, list[Image.Image]]:
    images = generate_for(generator, specs, seed, on_images)
    return evaluate(specs, images), images


def global_scores(
    understanding: UnderstandingModel, texts: Sequence[str], images: Sequence[Image.Image], batch_size: int = 64,
) -> list[float | None]:
    """The judge's global score of each image for its prompt, asked and read as SRUM asks it;
    None where the answer could not be read."""
    from srum_ray.judging import prompts as P
    from srum_ray.judging.parser import parse_global

    out: list[float | None] = []
    for s in range(0, len(texts), batch_size):
        answers = understanding.answer(list(images[s : s + batch_size]), [P.global_prompt(t) for t in texts[s : s + batch_size]], max_new_tokens=64)
        out += [parse_global(a).score for a in answers]
    return out


def global_verdicts(
    understanding: UnderstandingModel, specs: Sequence[PromptSpec], images: Sequence[Image.Image],
    batch_size: int = 64, right_score: float = 0.75,
) -> list[bool | None]:
    """The judge's whole-image verdict (global score >= ``right_score``: "exactly what the
    prompt asks" on the judge's rubric, not "mostly right") per image; None where the answer
    could not be read."""
    scores = global_scores(understanding, [sp.text for sp in specs], images, batch_size)
    return [None if score is None else score >= right_score for score in scores]


def agreement(specs: Sequence[PromptSpec], verdicts: Sequence[bool | None], truth: Sequence[bool]) -> dict[str, float]:
    """Per category and overall share of verdicts equal to the truth (an unread verdict counts wrong)."""
    per: dict[str, list[bool]] = {}
    for sp, v, t in zip(specs, verdicts, truth):
        per.setdefault(sp.category, []).append(v is not None and v == t)
    res = {c: float(np.mean(per[c])) for c in CATEGORIES if c in per}
    res["overall"] = float(np.mean([x for xs in per.values() for x in xs])) if per else float("nan")
    return res


def rendered_pairs(specs: Sequence[PromptSpec], seed: int = 0) -> tuple[list[PromptSpec], list[Image.Image], list[bool]]:
    """For each prompt one rendered scene that satisfies it and one wrong in one attribute."""
    rng = random.Random(f"shapes-measure/{seed}")
    out_specs, images, truth = [], [], []
    for sp in specs:
        out_specs += [sp, sp]
        images += [render(scene_for(sp, rng)), render(wrong_scene_for(sp, rng)[0])]
        truth += [True, False]
    return out_specs, images, truth


def understanding_vs_generation(
    generator: GenerationModel, understanding: UnderstandingModel, specs: Sequence[PromptSpec], seed: int = 0,
    images: Sequence[Image.Image] | None = None,
) -> dict:
    """Generation accuracy, and judge agreement on rendered and on generated images, per category.

    ``images``: the generator's images of ``specs`` drawn with this ``seed`` (what
    :func:`generation_report` returns), when the caller already has them; drawn here otherwise.
    """
    if images is None:
        report, images = generation_report(generator, specs, seed)
    elif len(images) != len(specs):
        raise ValueError(f"understanding_vs_generation: {len(images)} images for {len(specs)} prompts")
    else:
        report = evaluate(specs, images)
    truth_gen = [all(r) for r in report.results]
    r_specs, r_images, r_truth = rendered_pairs(specs, seed)
    return {
        "generation": {**report.per_category, "overall": report.overall},
        "understanding_rendered": agreement(r_specs, global_verdicts(understanding, r_specs, r_images), r_truth),
        "understanding_generated": agreement(specs, global_verdicts(understanding, specs, images), truth_gen),
        "generated_correct_share": float(np.mean(truth_gen)) if truth_gen else float("nan"),
        "n_prompts": report.n_prompts,
    }


def measure_checkpoint(root: str | Path, splits: dict[str, list[SplitPrompt]], n_test: int = 600, log: Callable[[str], None] = print) -> dict:
    """Load the checkpoint at ``root`` and measure it on the first ``n_test`` test prompts
    (spread over categories: the split is ordered by category, so take every k-th)."""
    from srum_ray.models.shapes_umm import ShapesGenerator
    from srum_ray.models.shapes_understanding import ShapesUnderstanding
    from srum_ray.shapes.train_umm import BASE_GENERATION

    gen = ShapesGenerator.from_pretrained(root, BASE_GENERATION)
    und = ShapesUnderstanding.from_pretrained(root)
    test = splits["test"]
    step = max(1, len(test) // max(1, n_test))
    specs = [p.spec for p in test[::step]][:n_test]
    res = understanding_vs_generation(gen, und, specs)
    from srum_ray.shapes.train_umm import single_object_prompt

    rng = random.Random("shapes-measure/single")
    singles = [single_object_prompt(rng) for _ in range(n_test // 2)]
    rep, _ = generation_report(gen, singles)
    res["single_object"] = {"overall": rep.overall, "n": len(singles)}
    res["sampling"] = {"num_inference_steps": BASE_GENERATION.num_inference_steps, "guidance_scale": BASE_GENERATION.guidance_scale, "shift": BASE_GENERATION.shift}
    log(format_gap_table(res))
    return res


def format_gap_table(res: dict) -> str:
    cats = [c for c in CATEGORIES if c in res["generation"]] + ["overall"]
    lines = ["| | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for key, label in (("generation", "generation accuracy"), ("understanding_rendered", "understanding, rendered"), ("understanding_generated", "understanding, generated")):
        lines.append(f"| {label} | " + " | ".join(f"{100 * res[key].get(c, float('nan')):.1f}" for c in cats) + " |")
    return "\n".join(lines)


def _generator_words(net: dict) -> str:
    if net.get("arch", "dit") == "udit":
        return (f"flow-matching transformer (width {net['width']}, depth {net['depth']}, prompt words under "
                f"joint attention, adaLN-zero) between a convolutional encoder and decoder (channels "
                f"{', '.join(map(str, net['conv_channels']))} at 64 / 32 / 16 px, skip connections), velocity prediction")
    return (f"flow-matching DiT (width {net['width']}, depth {net['depth']}, 2 x 2 latent patches, prompt words "
            "under joint attention, adaLN-zero), x-prediction")


def write_model_card(root: str | Path, card: dict) -> Path:
    root = Path(root)
    g, u, m = card.get("generator", {}), card.get("understanding", {}), card.get("measured", {})
    size_mb = sum(f.stat().st_size for f in root.glob("*.safetensors")) / 2**20
    single = m.get("single_object", {})
    text = f"""# shapes-umm: the shapes world's small unified model

Trained from scratch on this repository's 2-core CPU build machine, seed {card.get('seed')},
torch {card.get('torch')}; weights: {size_mb:.1f} MB of float32 safetensors. Reproduce (each part
is deterministic for a given torch build and thread count; the two parts can run at once):

```bash
{g.get('reproduce') or f"python -m srum_ray.shapes.train_umm --only generator --threads {g.get('threads')} --gen-steps {g.get('steps')} --out weights/shapes-umm"}
python -m srum_ray.shapes.train_umm --only understanding --threads {u.get('threads')} --judge-steps {u.get('steps')} --out weights/shapes-umm
python -m srum_ray.shapes.train_umm --only measure --out weights/shapes-umm     # this card
```

## What it is
- **Generator**: {_generator_words(card['net'])}, {g.get('params', 0) / 1e6:.2f} M parameters, on
  64 px images as 48 x 16 x 16 latents (space-to-depth, no VAE) (srum_ray/models/shapes_umm.py).
- **Understanding**: a perception network (image + region mask -> colour / shape / size /
  texture of the region's object, {u.get('params', 0) / 1e6:.2f} M parameters), the prompt read
  by the shapes grammar's parser, and probabilistic reasoning over what it sees (region score:
  does the object match something the prompt asks for; global score: do all objects, counts
  and relations hold). It answers the judge's questions in text; it grounds with connected
  components of non-background pixels.

## Data
Rendered scenes only (srum_ray/shapes/): the {card['data']['train_prompts']} prompts of the `train`
split (make_splits(0): colour, shape (size), texture, spatial, numeracy, complex) plus
single-object captions ({100 * card['data']['single_object_share']:.0f}% of examples), none naming a
held-out combination (red star, blue circle, green triangle, yellow square, small star, striped
triangle); a fresh scene per example. The perception network sees objects of scenes right or
wrong in one attribute, sometimes with a distractor, blurred and noised.

## Training
| part | steps | batch | lr | threads | wall time | final loss |
|---|---|---|---|---|---|---|
| generator | {g.get('steps')} | {g.get('batch')} | {g.get('lr')} | {g.get('threads')} | {g.get('seconds', 0) / 60:.1f} min | {g.get('final_loss', float('nan')):.4f} |
| understanding | {u.get('steps')} | {u.get('batch')} | {u.get('lr')} | {u.get('threads')} | {u.get('seconds', 0) / 60:.1f} min | {u.get('final_loss', float('nan')):.4f} |

Wall times were taken while other jobs shared the two cores. {g.get('note', '')}
The generator is stopped early, as a base model: {100 * single.get('overall', float('nan')):.1f}% of
{single.get('n', 0)} single-object captions fully right, weaker binding of several objects, sizes,
counts and relations (below).

## Accuracies (test split, {sum(m.get('n_prompts', {}).values())} prompts, exact evaluator)
Sampling: {m.get('sampling')}. Generation accuracy = share of prompts whose image satisfies every
constraint; understanding = agreement of the judge's whole-image verdict (score >= 0.75) with the
truth (rendered: how the scene was built, half right and half wrong in one attribute;
generated: the exact evaluator on the generator's own images).

{format_gap_table(m) if m else '(not measured)'}
"""
    path = root / "MODEL_CARD.md"
    path.write_text(text)
    return path
