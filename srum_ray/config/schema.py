"""Typed configuration: one dataclass per component.

Every field carries its allowed values in ``metadata`` (``choices`` or a numeric range via
``ge``/``gt``/``le``); :mod:`srum_ray.config.load` checks them and rejects unknown keys,
naming the key path. Defaults follow SPEC section 2.5 (the paper's recipe) unless a comment
says otherwise; ``configs/tiny.yaml`` sizes everything down for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def choice(default, *choices):
    """A field restricted to ``choices``."""
    return field(default=default, metadata={"choices": tuple(choices)})


def rng(default, *, ge=None, gt=None, le=None, lt=None, factory=None):
    """A numeric field restricted to a range."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    name: str = "srum"
    output_dir: str = "runs"
    seed: int = rng(0, ge=0)
    rounds: int = rng(1, ge=1)
    device: str = choice("auto", "auto", "cpu", "cuda")
    dtype: str = choice("float32", "float32", "bfloat16", "float16")
    progress: bool = True
    #: torch CPU threads (0 = torch's default); tiny models run fastest on 1
    cpu_threads: int = rng(0, ge=0, le=512)


@dataclass
class DataConfig:
    #: prompt files (.txt one prompt a line, '#' comments; or .jsonl with a "prompt" key);
    #: relative paths are resolved against the current working directory
    prompts: list[str] = field(default_factory=list)
    prompts_per_round: int = rng(8, ge=1)
    images_per_prompt: int = rng(1, ge=1)
    shuffle: bool = True


@dataclass
class TinyModelConfig:
    """Random-weight models built from config (the ``tiny`` backend)."""

    image_size: int = choice(64, 32, 64, 128)
    latent_channels: int = rng(4, ge=1, le=16)
    transformer_layers: int = rng(2, ge=1, le=8)
    transformer_heads: int = rng(2, ge=1, le=8)
    head_dim: int = rng(16, ge=4, le=64)
    text_hidden: int = rng(32, ge=8, le=256)
    text_max_length: int = rng(32, ge=8, le=128)
    vlm_hidden: int = choice(64, 16, 32, 64, 128, 256, 512)
    vlm_layers: int = rng(2, ge=1, le=8)
    vision_image_size: int = choice(32, 32, 64)
    seed: int = rng(0, ge=0)


@dataclass
class GeneratorModelConfig:
    """A diffusers flow-matching text-to-image pipeline on disk (backend ``diffusers``)."""

    #: pipeline directory (save_pretrained layout with model_index.json)
    path: str | None = None
    #: pipeline family; "auto" reads model_index.json's _class_name
    family: str = choice("auto", "auto", "sd3", "flux", "sana", "qwen_image")
    #: train the transformer fully or through LoRA adapters (peft)
    train: str = choice("full", "full", "lora")
    lora_rank: int = rng(16, ge=1, le=1024)
    lora_alpha: float = rng(16.0, gt=0.0)
    #: image side in pixels the generator draws
    resolution: int = rng(512, ge=32, le=4096)
    #: max prompt tokens for the pipeline's text encoders
    max_sequence_length: int = rng(256, ge=8, le=4096)


@dataclass
class UnderstandingModelConfig:
    """A transformers vision-language model on disk used as the judge (backend ``diffusers``)."""

    path: str | None = None
    #: model family; "auto" reads config.json's model_type
    family: str = choice("auto", "auto", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "idefics3", "smolvlm")
    #: use the generator's own text encoder as the judge when it is a VLM (Qwen-Image encodes
    #: prompts with Qwen2.5-VL): one copy in memory
    share_with_generator: bool = False
    #: longest image side given to the judge, in pixels (processors may resize further)
    image_max_side: int = rng(448, ge=28, le=4096)
    #: the shapes backend's judge only (ShapesUnderstanding; not in SPEC): "count" makes its
    #: global score also ask that it sees no more objects than the prompt names (a duplicate
    #: or an unasked object fails that term), "ignore" (default) scores the prompt's
    #: constraints alone, as T2I-CompBench does (docs/RESULTS.md, "Where no box is")
    extra_objects: str = choice("ignore", "ignore", "count")


@dataclass
class ModelConfig:
    #: "tiny": random models built in memory (or a tiny checkpoint); "diffusers": a diffusers
    #: pipeline as generator and a transformers VLM as judge, from local paths; or any backend
    #: a plugin registers (checked against the registry before anything loads)
    backend: str = "tiny"
    #: python modules imported before the model is built, so they can register backends
    #: (docs/BACKENDS.md)
    plugins: list[str] = field(default_factory=list)
    #: checkpoint directory of the tiny backend (save_tiny_checkpoint layout); must exist when set
    checkpoint: str | None = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    generator: GeneratorModelConfig = field(default_factory=GeneratorModelConfig)
    understanding: UnderstandingModelConfig = field(default_factory=UnderstandingModelConfig)


@dataclass
class GenerationConfig:
    num_inference_steps: int = rng(28, ge=1, le=1000)
    guidance_scale: float = rng(1.0, ge=0.0)
    #: timestep shift s of the sampler: shifted t = s t / (1 + (s - 1) t)
    shift: float = rng(4.0, gt=0.0)
    batch_size: int = rng(8, ge=1)


@dataclass
class SamConfig:
    #: "tiny" builds a random-weight SAM in memory (tests, the tiny run)
    model_type: str = choice("vit_b", "tiny", "vit_b", "vit_l", "vit_h")
    checkpoint: str | None = None
    points_per_side: int = rng(32, ge=1, le=64)
    pred_iou_thresh: float = rng(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = rng(0.95, ge=0.0, le=1.0)
    box_nms_thresh: float = rng(0.7, ge=0.0, le=1.0)
    min_mask_region_area: int = rng(0, ge=0)


@dataclass
class GrounderConfig:
    #: "sam": segment-anything checkpoint (.pth); "sam_hf": transformers SamModel directory;
    #: "model": the understanding module's own grounding; "none": global score only
    kind: str = choice("sam", "sam", "sam_hf", "model", "none")
    #: keep the largest N boxes by area (public code: 10)
    max_boxes: int = rng(10, ge=1, le=100)
    #: drop boxes smaller than this fraction of the image
    min_box_area_frac: float = rng(0.0, ge=0.0, lt=1.0)
    sam: SamConfig = field(default_factory=SamConfig)


@dataclass
class FilterConfig:
    #: ask the understanding module whether each box is about the prompt (the paper does,
    #: the public code skips it)
    enabled: bool = True
    max_new_tokens: int = rng(4, ge=1, le=64)
    #: what an unparseable yes/no answer does to the box (counted either way)
    on_unparsed: str = choice("keep", "keep", "drop")


@dataclass
class JudgeConfig:
    #: "free": the model writes the whole answer and the parser reads it; "guided": the judge
    #: writes the answer skeleton and the model fills the object name freely and the score
    #: under a numeric constraint (for small models that do not keep formats)
    answer_mode: str = choice("free", "free", "guided")
    max_new_tokens: int = rng(256, ge=1, le=4096)
    #: bounded retries for scores that could not be parsed
    max_retries: int = rng(2, ge=0, le=10)
    #: retries sample at this temperature (greedy retries would repeat the same answer)
    retry_temperature: float = rng(0.7, ge=0.0, le=2.0)
    #: what a region score that stays missing becomes
    on_missing_region: str = choice("drop_region", "drop_region", "neutral", "drop_sample")
    #: what a global score that stays missing becomes
    on_missing_global: str = choice("drop_sample", "drop_sample", "neutral")
    batch_size: int = rng(16, ge=1)


@dataclass
class RewardConfig:
    convention: str = choice("paper", "paper", "public_code")
    #: how overlapping boxes combine; "default" = the convention's own rule
    overlap: str = choice("default", "default", "max", "mean", "min", "last")
    #: what the pixels no box covers carry: "neutral" (the convention's base: 0 in paper, 0.5 in
    #: public_code; SPEC) or "global" (the judge's global score g, painted as a box scoring g
    #: would be: the verdict on the whole image applies where no region was judged; not in
    #: SPEC). With "neutral" a right image trains its objects harder than its empty canvas, and
    #: the generator learns to draw more objects (docs/RESULTS.md, "Where no box is")
    uncovered: str = choice("neutral", "neutral", "global")
    ablation: str = choice(
        "none", "none", "sample_level", "binarized", "no_global", "no_constraint", "sft"
    )
    #: sample selection on the judge's verdict (not in SPEC; null: off): a sample whose global
    #: score g is below this is not trained (``trained = False``, weight 0, its drop reason
    #: recorded), so a round trains on the images its judge calls right (rejection sampling).
    #: The kept samples get the ablation's weights as usual (with ``sft``: rejection-sampling
    #: fine-tuning on the judge's picks); a sample without a global score is not kept.
    min_global: float | None = rng(None, ge=-1.0, le=1.0)
    #: with it (or alone): a sample one of whose regions scores below this is not trained, so
    #: the kept images hold only objects the judge finds asked for (null: off; not in SPEC)
    min_region: float | None = rng(None, ge=-1.0, le=1.0)


@dataclass
class TrainConfig:
    #: learner backend: plain PyTorch or DeepSpeed ZeRO (runtime.learner sets the ranks)
    engine: str = choice("torch", "torch", "deepspeed")
    #: ZeRO stage of the deepspeed engine
    zero_stage: int = choice(1, 1, 2, 3)
    #: micro-batches per optimizer step (the global batch is train.batch_size)
    grad_accum_steps: int = rng(1, ge=1)
    steps_per_round: int = rng(4, ge=1)
    batch_size: int = rng(4, ge=1)
    lr: float = rng(2.5e-5, gt=0.0, le=1.0)
    warmup_steps: int = rng(500, ge=0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata={"len": 2, "ge": 0.0, "lt": 1.0})
    eps: float = rng(1e-15, gt=0.0, le=1e-3)
    weight_decay: float = rng(0.0, ge=0.0)
    grad_clip: float = rng(1.0, gt=0.0)
    #: weight of the constraint term L_ref (the paper's best: 0.5)
    lambda_c: float = rng(0.5, ge=0.0)
    #: timestep shift used when sampling training times
    timestep_shift: float = rng(4.0, gt=0.0)
    timestep_sampling: str = choice("uniform", "uniform", "logit_normal")
    #: share of rows trained with the unconditional (null) prompt, so the branch classifier-free
    #: guidance subtracts follows the conditional one and guidance cannot compound over rounds
    #: (0: off, SPEC's loss as written); needs a generator with ``null_condition``
    cond_dropout: float = rng(0.0, ge=0.0, le=1.0)
    #: what the constraint term L_ref pulls towards: ``sample`` (SPEC 2.5: the rollout's own
    #: velocity target, i.e. plain flow matching on it) or ``base`` (the frozen base weights'
    #: prediction at the same x_t, t and prompt: a KL-like anchor to the starting model;
    #: torch engine only)
    ref_anchor: str = choice("sample", "sample", "base")
    #: guidance scale w of the velocity the loss trains: 1 trains the conditional velocity
    #: v(x_t, t, c) (SPEC's loss as written); w > 1 trains the classifier-free-guided velocity
    #: v_null + w (v_cond - v_null) with the unconditional branch held fixed (no gradient), the
    #: velocity that drew rollouts sampled at generation.guidance_scale = w, against guidance
    #: compounding over rounds. Measured on the shapes world (docs/RESULTS.md): w = 3 over-corrects
    #: (objects fade), w = 2 nearly removes the drift. Needs a generator with ``null_condition``
    guidance_scale: float = rng(1.0, ge=1.0)


@dataclass
class OutputConfig:
    #: the picture per image with boxes, scores and reward map
    overlays: bool = True
    #: keep the checkpoint of every round (False: only the latest)
    keep_all_checkpoints: bool = True


@dataclass
class RoleConfig:
    """A fixed-size role (generators, learner ranks): how many and on what resources."""

    #: remote workers; 0 runs the role in the driver process
    replicas: int = rng(1, ge=0, le=1024)
    num_cpus: float = rng(1.0, ge=0.0)
    num_gpus: float = rng(0.0, ge=0.0)
    #: custom node resources, e.g. {"judge_node": 0.01}, to pin the role to a node type
    resources: dict[str, float] = field(default_factory=dict, metadata={"ge": 0.0})


@dataclass
class PoolConfig:
    """An autoscaling role (judges, grounders): a Ray Serve deployment."""

    #: max_replicas 0 runs the role in the driver process
    min_replicas: int = rng(1, ge=0, le=1024)
    max_replicas: int = rng(2, ge=0, le=1024)
    num_cpus: float = rng(1.0, ge=0.0)
    num_gpus: float = rng(0.0, ge=0.0)
    resources: dict[str, float] = field(default_factory=dict, metadata={"ge": 0.0})
    #: autoscaling target of in-flight requests per replica
    target_ongoing_requests: float = rng(2.0, gt=0.0)
    upscale_delay_s: float = rng(2.0, ge=0.0)
    downscale_delay_s: float = rng(10.0, ge=0.0)
    #: requests one replica serves at once (and the most that are batched into one call)
    max_ongoing_requests: int = rng(8, ge=1)
    max_batch_size: int = rng(4, ge=1)
    batch_wait_timeout_s: float = rng(0.05, ge=0.0)
    #: window over which the autoscaler averages in-flight requests
    look_back_period_s: float = rng(30.0, gt=0.0)
    #: how often handles and replicas report load to the autoscaler
    metrics_interval_s: float = rng(10.0, gt=0.0)
    #: how often the Serve controller checks replicas (a dead one is replaced after this)
    health_check_period_s: float = rng(10.0, gt=0.0)


@dataclass
class RuntimeConfig:
    """Where the roles run. mode "local": the single-process loop; "ray": actors per role."""

    mode: str = choice("local", "local", "ray")
    #: Ray address to join (None: RAY_ADDRESS, else start a local Ray)
    address: str | None = None
    generator: RoleConfig = field(default_factory=RoleConfig)
    grounder: PoolConfig = field(default_factory=PoolConfig)
    judge: PoolConfig = field(default_factory=PoolConfig)
    learner: RoleConfig = field(default_factory=RoleConfig)
    #: how refreshed weights reach generators: through the object store, or a torch.distributed
    #: broadcast from learner rank 0 (gloo on CPU, NCCL on GPU)
    weight_sync: str = choice("object_store", "object_store", "collective")
    #: attempts per stage request when a worker dies mid-request
    stage_retries: int = rng(3, ge=0, le=100)
    #: export round / loss / reward / latency / queue metrics with ray.util.metrics
    metrics: bool = True
    #: write a Ray timeline (chrome trace) per round into the round directory
    timeline: bool = False


@dataclass
class SrumConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grounder: GrounderConfig = field(default_factory=GrounderConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
