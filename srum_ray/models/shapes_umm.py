"""The shapes-world unified model: a small flow transformer and a small understanding module.

Both halves are trained here from scratch on rendered shapes-world scenes
(:mod:`srum_ray.shapes.train_umm`); the trained weights ship in ``weights/shapes-umm/``.
SRUM sees them through the same interface as every other backend (``model.backend: shapes``).

Generation (:class:`ShapesGenerator`): a DiT-style flow-matching transformer working in a
fixed, lossless "latent" space: the 64 px RGB image in [-1, 1], space-to-depth by 4, i.e.
``[48, 16, 16]`` (there is no VAE to learn; the reward map lands on a 16 x 16 grid). Prompt
words (a closed vocabulary, :class:`WordTokenizer`) and 2 x 2 latent patches form one
sequence under joint attention; the time and the pooled prompt modulate every block
(adaLN-zero). The network predicts the clean latent and returns the velocity it implies
(x-prediction), because a token is narrower than its patch. With ``latent: scene`` it works instead on
a 4 x 4 scene-grid latent decoded by the world's renderer (:mod:`srum_ray.shapes.scene_latent`;
experimental, not shipped). Sampling is the diffusers flow-matching Euler scheduler with shift, with
classifier-free guidance when ``generation.guidance_scale > 1`` (the null prompt is the
lone ``<cls>`` token, trained by prompt dropout).

Understanding lives in :mod:`srum_ray.models.shapes_understanding`: a learned perception
network (attributes of the object in a region), the prompt read by the shapes grammar's parser,
and probabilistic reasoning; it answers the judge's questions in text. This module holds what
both halves share (vocabulary, checkpoint files) and the generator; the networks and their
sizes (:class:`ShapesNetConfig`, the transformer block) are in :mod:`srum_ray.models.shapes_nets`
(re-exported here), the image helpers and latent codecs in :mod:`srum_ray.models.shapes_latent`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from srum_ray.config.schema import GenerationConfig
from srum_ray.models.base import GenerationModel, GenerationOutput, batch_times, check_files
from srum_ray.models.shapes_latent import latent_codec
from srum_ray.models.shapes_nets import (  # noqa: F401  (re-exported: the networks' public home was here)
    PHRASE_STARTS,
    Block,
    ShapesDiT,
    ShapesNetConfig,
    ShapesUDiT,
    build_generator_net,
    phrase_index,
)

# ---------------------------------------------------------------------------------- words
PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
_WORDS = (
    "a", "an", "and", "to", "the", "of", "left", "right", "above", "below",
    "one", "two", "three", "four",
    "circle", "square", "triangle", "star", "circles", "squares", "triangles", "stars",
    "red", "green", "blue", "yellow", "purple", "orange",
    "small", "large", "solid", "striped",
)
#: attribute classes the understanding module names, in head order
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_NAMES = ("circle", "square", "triangle", "star")
SIZE_NAMES = ("small", "large")
TEXTURE_NAMES = ("solid", "striped")
ATTRIBUTE_HEADS = {"colour": COLOUR_NAMES, "shape": SHAPE_NAMES, "size": SIZE_NAMES, "texture": TEXTURE_NAMES}


class WordTokenizer:
    """Closed-vocabulary word tokenizer: ``<cls> w1 w2 ... <pad>...`` of fixed length.

    Words are lowercase letter runs; a word outside the vocabulary is ``<unk>`` (counted in
    :attr:`unknown_seen`, never an error: a user's prompt may say anything).
    """

    def __init__(self, words: Sequence[str] = _WORDS, max_length: int = 32) -> None:
        self.vocab = (PAD, UNK, CLS) + tuple(words)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = int(max_length)
        self.unknown_seen = 0

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def words(self, text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, max_length]`` int64 ids (longer prompts are cut, after ``<cls>``)."""
        rows = []
        for text in texts:
            ids = [self.index[CLS]]
            for w in self.words(text)[: self.max_length - 1]:
                if w not in self.index:
                    self.unknown_seen += 1
                ids.append(self.index.get(w, self.index[UNK]))
            rows.append(ids + [self.pad_id] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)


# --------------------------------------------------------------------------- generator
META_FILE = "shapes_umm.json"
GEN_WEIGHTS = "generator.safetensors"
JUDGE_WEIGHTS = "understanding.safetensors"


def _load_meta(root: Path) -> tuple[ShapesNetConfig, WordTokenizer, dict]:
    meta = json.loads((root / META_FILE).read_text())
    # checkpoints written before ``arch`` existed hold the plain patch transformer
    cfg = ShapesNetConfig(**{"arch": "dit", **meta["net"]})
    return cfg, WordTokenizer(meta["vocab"][3:], cfg.max_words), meta


def save_meta(root: str | Path, cfg: ShapesNetConfig, tokenizer: WordTokenizer, extra: dict | None = None) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"net": dataclasses.asdict(cfg), "vocab": list(tokenizer.vocab), **(extra or {})}
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


class ShapesGenerator(GenerationModel):
    """Flow-matching generator of 64 px shapes-world images (see the module docstring)."""

    def __init__(
        self,
        cfg: ShapesNetConfig,
        gen_cfg: GenerationConfig,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer: WordTokenizer | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg, self.gen_cfg = cfg, gen_cfg
        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = tokenizer or WordTokenizer(max_length=cfg.max_words)
        self.codec = latent_codec(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = build_generator_net(cfg, self.tokenizer.vocab)
        self.net.to(self.device, dtype)

    @property
    def image_size(self) -> int:
        return self.cfg.canvas

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.cfg.latent_channels, self.cfg.latent_side, self.cfg.latent_side)

    def trainable_module(self) -> torch.nn.Module:
        return self.net

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"words": self.tokenizer(prompts)}

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.codec.encode_images(images)

    def encode_scenes(self, scenes: Sequence) -> torch.Tensor:
        """Latents of shapes-world scenes (training data): exact for the scene latent, the
        rendered image's for pixels."""
        return self.codec.encode_scenes(scenes)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return self.codec.decode(latents)

    def as_drawn(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent of the image a sample decodes to (see :mod:`srum_ray.models.shapes_latent`)."""
        return self.codec.as_drawn(latents)

    supports_null_condition = True

    def null_condition(self, cond: dict[str, torch.Tensor], drop: torch.Tensor) -> dict[str, torch.Tensor]:
        words = cond["words"].clone()
        words[drop.to(words.device)] = self.tokenizer([""]).to(words.device)
        return {**cond, "words": words}

    def predict_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        t = batch_times(t, x_t.shape[0], x_t.device)
        words = cond["words"].to(x_t.device)
        return self.net(x_t.to(self.dtype), t, words, self.tokenizer.pad_id)

    def sampling_sigmas(self) -> torch.Tensor:
        """The ``num_inference_steps + 1`` noise levels visited (diffusers' flow Euler with shift)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        n = self.gen_cfg.num_inference_steps
        sched = FlowMatchEulerDiscreteScheduler(shift=self.gen_cfg.shift)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n).tolist())
        return sched.sigmas.clone().float()

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """One image per prompt in chunks of ``generation.batch_size``; image ``i`` depends
        only on the weights, ``prompts[i]`` and ``seeds[i]`` (its noise is seeded by it)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        sigmas = self.sampling_sigmas().to(self.device)
        words = self.tokenizer(prompts)
        latents = []
        step = self.gen_cfg.batch_size
        for start in range(0, len(prompts), step):
            latents.append(self._sample(words[start : start + step], seeds[start : start + step], sigmas))
        x0 = self.as_drawn(torch.cat(latents) if latents else torch.zeros(0, *self.latent_shape))
        return GenerationOutput(self.decode(x0), x0, {"words": words})

    def _sample(self, words: torch.Tensor, seeds: Sequence[int], sigmas: torch.Tensor) -> torch.Tensor:
        noise = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        x = torch.stack(noise).to(self.device)
        words = words.to(self.device)
        guided = self.gen_cfg.guidance_scale > 1.0
        if guided:
            null = self.tokenizer([""]).to(self.device).expand_as(words)
            words = torch.cat([null, words])
        for i in range(len(sigmas) - 1):
            x_in = torch.cat([x, x]) if guided else x
            t = sigmas[i].expand(x_in.shape[0])
            v = self.net(x_in.to(self.dtype), t, words, self.tokenizer.pad_id).float()
            if guided:
                v_null, v_cond = v.chunk(2)
                v = v_null + self.gen_cfg.guidance_scale * (v_cond - v_null)
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        return x.float().cpu()

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        root = Path(path)
        save_meta(root, self.cfg, self.tokenizer, extra)
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.net.state_dict().items()}, root / GEN_WEIGHTS)

    @classmethod
    def from_pretrained(cls, path: str | Path, gen_cfg: GenerationConfig, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "ShapesGenerator":
        from safetensors.torch import load_file

        root = check_files(path, (META_FILE, GEN_WEIGHTS), "shapes generator")
        cfg, tok, _ = _load_meta(root)
        model = cls(cfg, gen_cfg, device, dtype, tokenizer=tok)
        model.net.load_state_dict(load_file(root / GEN_WEIGHTS))
        return model
