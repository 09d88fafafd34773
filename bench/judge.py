"""Judged regions per second of our batched judge vs one request per image, same VLM.

    python bench/judge.py --preset qwen2.5-vl-7b --device cuda --images 64 --batch 16 --max-new-tokens 128
    python bench/judge.py --preset cpu --images 16 --batch 8
    python bench/judge.py --preset tiny --images 4 --batch 4 --max-new-tokens 8     # smoke size

The judge is a random-weight Qwen2.5-VL built from config (``--preset qwen2.5-vl-7b``: the
7 B language model and 32-block vision tower sizes; images of ``--image-side`` px, 448 =
256 image tokens) through :class:`srum_ray.models.transformers_judge.TransformersUnderstanding`
and the family's processor and chat template. Every image carries ``--regions`` kept boxes;
a judged sample is SPEC 2.3's two questions (global layout score, and one local question
listing the regions), answered greedily in free mode with ``--max-new-tokens`` each,
no retries (``judge.max_retries: 0``), so every way does the same work:

* ``ours_batched``: :meth:`srum_ray.judging.judge.Judge.judge` with ``judge.batch_size``
  ``--batch`` (what a judge replica runs);
* ``ours_batch1``: the same at ``judge.batch_size: 1``;
* ``plain_per_image``: a hand-written loop: for each image, its two questions through the
  processor and ``model.generate`` one request at a time (the public code's shape).

After one untimed warm-up each, ``--repeats`` passes are timed with the ways interleaved;
the best counts. Reported: regions/s and images/s per way, the speed-up of ``ours_batched``
over ``plain_per_image``, and how many answers the two agree on (the same greedy answers
mean the same work was done).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from srum_ray.config.schema import JudgeConfig  # noqa: E402
from srum_ray.types import Box  # noqa: E402

QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>")
PRESETS: dict[str, dict[str, Any]] = {
    # the tests' tiny Qwen2.5-VL (tests/models/_tiny_vlms.py): 64 px images = 16 image tokens
    "tiny": dict(hidden=32, layers=2, heads=2, kv_heads=2, ffn=64, vocab=0, mrope=(2, 3, 3),
                 vis_depth=1, vis_hidden=32, vis_heads=2, vis_ffn=64, patch=8, window=16,
                 fullatt=(0,), image_side=64),
    # 224 px = 64 image tokens into a 4 x 256 language model
    "cpu": dict(hidden=256, layers=4, heads=4, kv_heads=2, ffn=1024, vocab=0, mrope=(8, 12, 12),
                vis_depth=2, vis_hidden=128, vis_heads=4, vis_ffn=512, patch=14, window=112,
                fullatt=(1,), image_side=224),
    # Qwen2.5-VL-7B-Instruct's config: 28 x 3584 (GQA 28/4), vision 32 x 1280
    "qwen2.5-vl-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064,
                          mrope=(16, 24, 24), vis_depth=32, vis_hidden=1280, vis_heads=16, vis_ffn=3420,
                          patch=14, window=112, fullatt=(7, 15, 23, 31), image_side=448),
}
WAYS = ("ours_batched", "ours_batch1", "plain_per_image")
PROMPTS = ("a red cube left of a blue ball", "two yellow stars above a green car",
           "a cat under a wooden table", "three apples and a glass bottle")


def build_judge_model(size: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """``(TransformersUnderstanding, model, processor)`` of a random Qwen2.5-VL of ``size``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from srum_ray.models import _vlm_families as F
    from srum_ray.models.tokenizer import build_tokenizer
    from srum_ray.models.transformers_judge import TransformersUnderstanding

    tok = build_tokenizer(extra_special=QWEN_TOKENS)
    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=max(len(tok), size["vocab"]), hidden_size=size["hidden"],
                intermediate_size=size["ffn"], num_hidden_layers=size["layers"],
                num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                max_position_embeddings=32768, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "mrope_section": list(size["mrope"]),
                                 "rope_theta": 1e6})
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=size["vis_depth"], hidden_size=size["vis_hidden"],
                           intermediate_size=size["vis_ffn"], num_heads=size["vis_heads"],
                           patch_size=size["patch"], spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=size["hidden"], window_size=size["window"],
                           fullatt_block_indexes=list(size["fullatt"])),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    side = size["image_side"]
    image_processor = Qwen2VLImageProcessorPil(patch_size=size["patch"], merge_size=2, temporal_patch_size=2,
                                               min_pixels=(2 * size["patch"]) ** 2, max_pixels=side * side)
    processor = F.assemble_processor(F.FAMILIES["qwen2_5_vl"], image_processor, tok, F.QWEN_VL_TEMPLATE)
    understanding = TransformersUnderstanding(model, processor, "qwen2_5_vl", image_max_side=side)
    return understanding, model, understanding.processor


def make_samples(n: int, side: int, regions: int, seed: int = 0):
    """``n`` random RGB images of ``side`` px, prompts, and ``regions`` boxes each (all kept)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    boxes = []
    for _ in range(n):
        row = []
        for _ in range(regions):
            x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
            w, h = (int(v) for v in rng.integers(side // 8, side // 2, 2))
            row.append(Box(x0, y0, min(side, x0 + w), min(side, y0 + h)))
        boxes.append(row)
    return images, prompts, boxes, [[True] * regions for _ in range(n)]


class PlainJudge:
    """The hand-written alternative: one image and one question per ``generate`` call."""

    def __init__(self, model, processor, max_new_tokens: int) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.dtype = next(model.parameters()).dtype

    def ask(self, image: Image.Image, question: str) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(images=[image], text=[text], return_tensors="pt").to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        tok = self.processor.tokenizer
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def judge(self, images, prompts, boxes) -> list[tuple[str, str]]:
        from srum_ray.judging import prompts as P

        answers = []
        for image, prompt, bs in zip(images, prompts, boxes):
            regions = list(enumerate(bs, start=1))
            answers.append((self.ask(image, P.global_prompt(prompt)),
                            self.ask(image, P.local_prompt(prompt, regions, image.size))))
        return answers


def main(argv=None) -> int:
    p = C.parser(__doc__, "judge.json")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--images", type=int, default=16, help="images judged by each way")
    p.add_argument("--regions", type=int, default=3, help="kept boxes per image")
    p.add_argument("--batch", type=int, default=8, help="judge.batch_size of ours_batched")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer budget per question")
    p.add_argument("--image-side", type=int, default=None, help="overrides the preset")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per way, interleaved (best counts)")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    C.add_device_args(p)
    a = p.parse_args(argv)
    device = C.setup(a)
    ways = C.selected_ways(p, a.ways, WAYS)
    size = dict(PRESETS[a.preset])
    if a.image_side:
        size["image_side"] = a.image_side
    dtype = getattr(torch, a.dtype)

    from srum_ray.judging.judge import Judge

    understanding, model, processor = build_judge_model(size, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    images, prompts, boxes, kept = make_samples(a.images, size["image_side"], a.regions)
    judges = {
        name: Judge(understanding, JudgeConfig(answer_mode="free", max_new_tokens=a.max_new_tokens,
                                               max_retries=0, batch_size=b))
        for name, b in (("ours_batched", a.batch), ("ours_batch1", 1))
    }
    plain = PlainJudge(model, processor, a.max_new_tokens)
    answers: dict[str, list[tuple[str, str]]] = {}

    def run(way: str, n: int) -> None:
        if way == "plain_per_image":
            answers[way] = plain.judge(images[:n], prompts[:n], boxes[:n])
        else:
            got = judges[way].judge(images[:n], prompts[:n], boxes[:n], kept[:n])
            answers[way] = [(j.global_raw[0], j.region_raw[0]) for j in got]

    print(f"Qwen2.5-VL judge {n_params / 1e6:.1f} M parameters, {size['image_side']} px images, "
          f"{a.images} images x {a.regions} regions, {a.max_new_tokens} new tokens per question, "
          f"batch {a.batch}, {a.dtype} on {device}", flush=True)
    for way in ways:  # one untimed call each
        run(way, min(a.batch, a.images) if way == "ours_batched" else 1)
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(a.repeats):
        for way in ways:
            times[way] += C.time_calls(lambda: run(way, a.images), repeats=1, warmup=0, device=device)
    regions = a.images * a.regions
    results: dict[str, Any] = {}
    for way in ways:
        s = C.summary(times[way])
        results[way] = {**s, "regions_per_s": regions / s["best_s"], "images_per_s": a.images / s["best_s"],
                        "model_calls": (judges[way].stats.calls if way in judges else 2 * a.images)}
    rate = {w: r["regions_per_s"] for w, r in results.items()}
    ratios = {
        "ours_batched_vs_plain_per_image": C.ratio(rate.get("ours_batched"), rate.get("plain_per_image")),
        "ours_batch1_vs_plain_per_image": C.ratio(rate.get("ours_batch1"), rate.get("plain_per_image")),
    }
    agree = None
    if "ours_batched" in answers and "plain_per_image" in answers:
        pairs = list(zip(answers["ours_batched"], answers["plain_per_image"]))
        agree = sum((a_ == b_) for x, y in pairs for a_, b_ in zip(x, y)) / (2 * len(pairs))
    C.print_table(
        f"judging, Qwen2.5-VL {n_params / 1e6:.1f} M, {a.images} images x {a.regions} regions, "
        f"{a.max_new_tokens} new tokens, {a.dtype}, {device}",
        ["way", "batch", "model calls", "regions/s", "images/s", "best s"],
        [[w, a.batch if w == "ours_batched" else 1, r["model_calls"], r["regions_per_s"], r["images_per_s"],
          r["best_s"]] for w, r in results.items()],
    )
    print("ratios: " + ", ".join(f"{k} {C.fmt(v, '.2f')}x" for k, v in ratios.items())
          + f"; batched and per-image answers agree on {C.fmt(agree, '.0%') if agree is not None else '-'}")
    C.write_json(a.out, {
        "preset": a.preset, "size": size, "params": n_params, "images": a.images, "regions": a.regions,
        "batch": a.batch, "max_new_tokens": a.max_new_tokens, "dtype": a.dtype, "device": str(device),
        "ways": results, "ratios": ratios, "answers_agree": agree,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
