"""The shapes-world unified model's understanding half (see :mod:`srum_ray.models.shapes_umm`).

A learned perception network reads the colour, shape, size and texture of the object in a
region (image + region mask); the prompt is read by the shapes grammar's parser; scores come
from probabilistic reasoning over what was seen. :class:`ShapesUnderstanding` answers the
judge's questions in text (the judge's parser reads them) and grounds natively with
connected components of non-background pixels (:func:`foreground_boxes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from srum_ray.models.base import AnswerConstraint, UnderstandingModel, check_answer_args, check_files
from srum_ray.models.shapes_latent import images_to_pixels
from srum_ray.models.shapes_umm import (
    ATTRIBUTE_HEADS,
    JUDGE_WEIGHTS,
    META_FILE,
    Block,
    ShapesNetConfig,
    WordTokenizer,
    _load_meta,
    save_meta,
)
from srum_ray.types import Box


class ShapesPerceptionNet(nn.Module):
    """Image + region mask -> colour / shape / size / texture logits of the region's object."""

    def __init__(self, cfg: ShapesNetConfig) -> None:
        super().__init__()
        d = cfg.judge_width
        self.stem = nn.Sequential(
            nn.Conv2d(4, 48, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(48, 96, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(96, d, 4, stride=2, padding=1),
        )
        self.img_pos = nn.Parameter(torch.randn((cfg.canvas // 8) ** 2, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.cond = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.judge_heads) for _ in range(cfg.judge_depth))
        for blk in self.blocks:  # gates open: plain pre-norm blocks to start with
            with torch.no_grad():
                blk.ada[1].bias[2 * d : 3 * d] = 1.0
                blk.ada[1].bias[5 * d : 6 * d] = 1.0
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({name: nn.Linear(d, len(classes)) for name, classes in ATTRIBUTE_HEADS.items()})

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pixels [B, 3, 64, 64]`` in [-1, 1], ``mask [B, 1, 64, 64]`` -> ``{"colour": [B, 6], ...}``."""
        feat = self.stem(torch.cat([pixels, mask * 2 - 1], dim=1)).flatten(2).transpose(1, 2) + self.img_pos
        seq = torch.cat([self.cls.expand(feat.shape[0], -1, -1), feat], dim=1)
        keep = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
        cond = self.cond.expand(seq.shape[0], -1)
        for blk in self.blocks:
            seq = blk(seq, cond, keep)
        cls = self.norm(seq[:, 0])
        return {name: head(cls) for name, head in self.heads.items()}


def box_masks(boxes: Sequence[Box | None], canvas: int) -> torch.Tensor:
    """``[B, 1, canvas, canvas]``: ones inside each box, all ones for ``None`` (whole image)."""
    m = torch.zeros(len(boxes), 1, canvas, canvas)
    for i, box in enumerate(boxes):
        if box is None:
            m[i] = 1.0
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in box.as_list())
            m[i, :, max(0, y0) : min(canvas, y1), max(0, x0) : min(canvas, x1)] = 1.0
    return m


def foreground_boxes(image: Image.Image, *, threshold: float = 60.0, min_area: int = 12) -> list[Box]:
    """Class-agnostic proposals: boxes of 8-connected components of non-background pixels.

    The background is the median colour of the image border; a pixel is foreground when
    some channel differs from it by more than ``threshold``. Components smaller than
    ``min_area`` pixels are dropped. Boxes come largest first.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    mask = np.abs(rgb - np.median(border, axis=0)).max(-1) > threshold
    from srum_ray.shapes.detect import components

    found = []
    for comp in components(mask, connectivity=8):
        if len(comp) >= min_area:
            rows, cols = comp[:, 0], comp[:, 1]
            found.append((len(comp), Box(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))))
    found.sort(key=lambda a: -a[0])
    return [b for _, b in found]


# ------------------------------------------------------------------------ understanding
_PROMPT_RE = re.compile(r'^Prompt: "(.*)"$', re.MULTILINE)
_REGION_RE = re.compile(r"^Region (\d+): \[(-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\]$", re.MULTILINE)
_SINGLE_REGION_RE = re.compile(r"^Region: \[(-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\]$", re.MULTILINE)
_SCORE_TAIL_RE = re.compile(r"Region (\d+): Object: (.*); Score: $")
#: the global score from which the image counts as entirely right (see ShapesUnderstanding)
RIGHT_SCORE = 0.75
#: what the understanding module says to a question it does not know
UNKNOWN_QUESTION = "I cannot answer that question."
#: what the global score does with objects beyond those the prompt names (ShapesUnderstanding)
EXTRA_OBJECTS = ("ignore", "count")


@dataclass
class Seen:
    """What the perception network sees in one region: its box and attribute probabilities."""

    box: Box
    probs: dict[str, np.ndarray]

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box.x0 + self.box.x1) / 2, (self.box.y0 + self.box.y1) / 2)

    def name(self) -> str:
        top = {k: ATTRIBUTE_HEADS[k][int(np.argmax(p))] for k, p in self.probs.items()}
        texture = "striped " if top["texture"] == "striped" else ""
        return f"{top['size']} {texture}{top['colour']} {top['shape']}"

    def match(self, q) -> float:
        """Probability that this object has every attribute the query ``q`` names."""
        p = 1.0
        for attr, classes in ATTRIBUTE_HEADS.items():
            want = getattr(q, attr)
            if want is not None:
                p *= float(self.probs[attr][classes.index(want)])
        return p


def constraint_probability(c, seen: Sequence[Seen]) -> float:
    """How likely constraint ``c`` holds given what was seen (objects independent)."""
    from srum_ray.shapes.constraints import Count, Exists, Relation, relation_holds

    if isinstance(c, Exists):
        miss = 1.0
        for s in seen:
            miss *= 1 - s.match(c.obj)
        return 1 - miss
    if isinstance(c, Count):
        # the n likeliest objects match and no other does
        ps = sorted((s.match(c.obj) for s in seen), reverse=True)
        if len(ps) < c.n:
            return 0.0
        return float(np.prod(ps[: c.n]) * np.prod([1 - p for p in ps[c.n :]]))
    if isinstance(c, Relation):
        best = 0.0
        for i, a in enumerate(seen):
            for j, b in enumerate(seen):
                if i != j and relation_holds(c.rel, a.centre, b.centre):
                    best = max(best, a.match(c.a) * b.match(c.b))
        return best
    raise TypeError(f"not a constraint: {c!r}")


class ShapesUnderstanding(UnderstandingModel):
    """Answers the judge's questions about shapes-world images (see the module docstring).

    It reads the prompt with the shapes grammar (:func:`srum_ray.shapes.grammar.parse_prompt`)
    into what it asks for, looks at regions with the learned perception network, and scores:

    * a region: ``2 * max_q P(object matches q) - 1`` over the prompt's object phrases ``q``
      (an object nobody asked for scores near -1);
    * the whole image: its own regions (:meth:`ground`), then ``2 * mean_c P(c holds) - 1``
      over the prompt's constraints (exists / exact count / relation, objects independent):
      1 when all hold, lower the more fail. A whole-image verdict "right" is a score of at
      least :data:`RIGHT_SCORE` (with at most four constraints, one missed scores <= 0.5).
      With ``extra_objects="count"`` the mean has one more term: 1 when no more regions are
      seen than the prompt names objects (:func:`~srum_ray.shapes.grammar.n_objects`), else 0.

    A prompt outside the grammar gets a one-line answer saying so and no score (the judge's
    parser then reports it missing).
    """

    def __init__(
        self, cfg: ShapesNetConfig, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
        extra_objects: str = "ignore",
    ) -> None:
        if extra_objects not in EXTRA_OBJECTS:
            raise ValueError(f"extra_objects {extra_objects!r} is not one of {EXTRA_OBJECTS}")
        self.cfg = cfg
        self.extra_objects = extra_objects
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = WordTokenizer(max_length=cfg.max_words)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ShapesPerceptionNet(cfg)
        self.net.to(self.device, dtype).eval()

    # ------------------------------------------------------------------ seeing and reasoning
    @torch.no_grad()
    def perceive(self, images: Sequence[Image.Image], boxes: Sequence[Box], batch_size: int = 128) -> list[Seen]:
        """Attribute probabilities of the object in ``boxes[i]`` of ``images[i]``."""
        out: list[Seen] = []
        for s in range(0, len(images), batch_size):
            bs = list(boxes[s : s + batch_size])
            res = self.net(
                images_to_pixels(images[s : s + batch_size], self.cfg.canvas).to(self.device, self.dtype),
                box_masks(bs, self.cfg.canvas).to(self.device, self.dtype),
            )
            probs = {k: torch.softmax(v.float(), -1).cpu().numpy() for k, v in res.items()}
            out += [Seen(b, {k: p[i] for k, p in probs.items()}) for i, b in enumerate(bs)]
        return out

    def region_score(self, spec, seen: Seen) -> float:
        from srum_ray.shapes.grammar import queries_of

        return 2 * max((seen.match(q) for q in queries_of(spec)), default=0.0) - 1

    def global_score(self, spec, seen: Sequence[Seen]) -> float:
        """``2 * mean_c P(c holds) - 1``: graded (every constraint met scores near 1, one of
        three missed about 0.33), so a partly right image is told apart from a wholly wrong one."""
        from srum_ray.shapes.grammar import n_objects

        ps = [constraint_probability(c, seen) for c in spec.constraints]
        if ps and self.extra_objects == "count":
            ps.append(1.0 if len(seen) <= n_objects(spec) else 0.0)
        return 2 * float(np.mean(ps)) - 1 if ps else 0.0

    # ------------------------------------------------------------------ the text interface
    def answer(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        constraint: AnswerConstraint | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        from srum_ray.shapes.grammar import parse_prompt

        check_answer_args(images, prompts, max_new_tokens, temperature, constraint)
        questions = []
        for image, question in zip(images, prompts):
            kind, prompt, extra = self._read_question(question)
            spec = None
            if kind != "unknown":
                try:
                    spec = parse_prompt(prompt)
                except ValueError as e:
                    kind, extra = "unreadable", {"error": str(e)}
            if kind == "global":
                extra = {"regions": list(enumerate(self.ground([image], [prompt])[0], 1))}
            questions.append((kind, spec, extra))
        # one batched look at every region every question needs
        wanted = [(i, box) for i, (_, _, extra) in enumerate(questions) for _, box in extra.get("regions", [])]
        seen = self.perceive([images[i] for i, _ in wanted], [b for _, b in wanted])
        per_q: list[list[Seen]] = [[] for _ in questions]
        for (i, _), s in zip(wanted, seen):
            per_q[i].append(s)
        return [self._write(kind, spec, extra, per_q[i], constraint) for i, (kind, spec, extra) in enumerate(questions)]

    def _read_question(self, question: str) -> tuple[str, str, dict]:
        m = _PROMPT_RE.search(question)
        if m is None:
            return "unknown", "", {}
        prompt = m.group(1)
        regions = [(int(g[0]), Box(*(float(v) for v in g[1:]))) for g in _REGION_RE.findall(question)]
        if "Answer yes or no." in question:
            single = _SINGLE_REGION_RE.search(question)
            if single is None:
                return "unknown", prompt, {}
            return "filter", prompt, {"regions": [(0, Box(*(float(v) for v in single.groups())))]}
        if "Judge only the layout" in question:
            return "global", prompt, {}
        if not regions:
            return "unknown", prompt, {}
        tail = _SCORE_TAIL_RE.search(question)
        if tail is not None:
            return "score", prompt, {"regions": [r for r in regions if r[0] == int(tail.group(1))][:1]}
        if question.rstrip().endswith("Object:"):
            return "object", prompt, {"regions": regions[:1]}
        return "local", prompt, {"regions": regions}

    def _write(self, kind: str, spec, extra: dict, seen: list[Seen], constraint: AnswerConstraint | None) -> str:
        if kind == "unreadable":
            text = f"I cannot read this prompt: {extra['error']}"
        elif kind == "unknown" or (kind != "global" and not seen):
            text = UNKNOWN_QUESTION
        elif kind == "global":
            score = f"{self.global_score(spec, seen):.2f}"
            text = score if constraint is not None else f"Score: {score}\nReason: {len(seen)} objects seen"
        elif kind == "score":
            text = f"{self.region_score(spec, seen[0]):.2f}"
        elif kind == "object":
            text = seen[0].name()
        elif kind == "filter":
            text = "yes" if self.region_score(spec, seen[0]) > -0.5 else "no"
        else:
            lines = []
            for (rid, _), s in zip(extra["regions"], seen):
                score = self.region_score(spec, s)
                reason = "asked for by the prompt" if score > 0 else "not what the prompt asks for"
                lines.append(f"Region {rid}: Object: {s.name()}; Score: {score:.2f}; Reason: {reason}")
            text = "\n".join(lines)
        if constraint is not None and constraint.kind == "choice":
            return text if text in constraint.choices else constraint.choices[-1]
        return text

    def ground(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[list[Box]]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return [foreground_boxes(img) for img in images]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        root = Path(path)
        save_meta(root, self.cfg, self.tokenizer, extra)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.net.state_dict().items()}, root / JUDGE_WEIGHTS)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32, extra_objects: str = "ignore",
    ) -> "ShapesUnderstanding":
        from safetensors.torch import load_file

        root = check_files(path, (META_FILE, JUDGE_WEIGHTS), "shapes understanding")
        cfg, _, _ = _load_meta(root)
        model = cls(cfg, device, dtype, extra_objects=extra_objects)
        model.net.load_state_dict(load_file(root / JUDGE_WEIGHTS))
        model.net.eval()
        return model
