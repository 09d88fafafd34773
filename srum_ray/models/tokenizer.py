"""A small byte-level BPE tokenizer trained in memory, for the random-weight ``tiny`` backend.

Nothing is downloaded: the BPE is trained with the ``tokenizers`` library on a short fixed
corpus written below (judging vocabulary: scores, reasons, regions, objects, colours, shapes,
spatial words, numbers) and wrapped in a :class:`transformers.PreTrainedTokenizerFast`, so
it saves and loads like any hub tokenizer. Training is deterministic: every call with the same
arguments yields the same vocabulary and merges.

Special tokens (fixed ids): ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then
``extra_special`` in order. The eos id is deliberately not 2: CLIP text models treat an
``eos_token_id`` of 2 as a legacy config and pool at the largest token id instead.
Encoding prepends ``<bos>``; callers append ``<eos>`` where their model wants it.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
BASE_SPECIAL: tuple[str, ...] = (PAD, UNK, BOS, EOS)

_COLOURS = "red green blue yellow black white orange purple pink brown gray silver gold"
_SHAPES = "circle square triangle cube sphere cone cylinder star heart ring box ball"
_OBJECTS = (
    "cat dog bird horse car bus bicycle apple banana cup bottle chair table book lamp "
    "tree flower house window door clock phone bag hat shoe person child boat train"
)
_SPATIAL = (
    "left right top bottom above below on under behind in front of next to near far "
    "inside outside between beside center middle corner"
)
_TEMPLATES = (
    "Score: {num}\nReason: the {colour} {obj} is {spatial} the {shape}.",
    "Region {idx}: Object: {colour} {obj}. Score: {num}",
    "Global score {num}. Reason: the layout matches the prompt with minor flaws.",
    "Is the region about the prompt? Answer yes or no. Answer: {yn}",
    "USER: <image>\nRate how well the image matches: a {colour} {shape} {spatial} a {obj}.\n"
    "ASSISTANT: Score: {num}",
    "Box [{idx}, {idx2}, {idx3}, {idx4}] shows a {colour} {obj}; score {num}; {yn}.",
    "The {obj} is distorted and irrelevant, score {num}. The background is neutral, 0.0.",
)
_NUMBERS = (
    "-1.0", "-0.9", "-0.8", "-0.7", "-0.6", "-0.5", "-0.4", "-0.3", "-0.2", "-0.1", "0.0",
    "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0", "+0.5", "1", "0",
)
_PROSE = """
The image shows a scene. Judge the composition and the spatial layout against the prompt.
A score of 1.0 means perfect, 0.5 to 0.9 means mostly right, -0.4 to 0.4 is neutral, -0.9 to
-0.5 means a wrong layout and -1.0 contradicts the prompt. Name the object in every region,
then give one score between -1 and 1 for relevance and visual quality. Answer yes or no.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 48 64 100 128 256. Two, three, four, several.
"""


def _corpus() -> list[str]:
    """The fixed training corpus: prose plus every template filled in a fixed order."""
    colours, shapes = _COLOURS.split(), _SHAPES.split()
    objects, spatial = _OBJECTS.split(), _SPATIAL.split()
    lines = [ln for ln in _PROSE.strip().splitlines()]
    lines += [_COLOURS, _SHAPES, _OBJECTS, _SPATIAL, " ".join(_NUMBERS)]
    k = 0
    for template in _TEMPLATES:
        for i in range(24):
            k += 1
            lines.append(
                template.format(
                    num=_NUMBERS[(k * 7) % len(_NUMBERS)],
                    colour=colours[(k * 3) % len(colours)],
                    obj=objects[(k * 5) % len(objects)],
                    shape=shapes[(k * 11) % len(shapes)],
                    spatial=spatial[(k * 13) % len(spatial)],
                    yn="yes" if k % 2 else "no",
                    idx=i,
                    idx2=(i * 3) % 64,
                    idx3=(i * 5) % 64 + 8,
                    idx4=(i * 7) % 64 + 8,
                )
            )
    return lines


def build_tokenizer(
    vocab_size: int = 512, extra_special: Sequence[str] = ("<image>",)
) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE in memory and wrap it for ``transformers``.

    Args:
        vocab_size: target vocabulary size including the 256 byte symbols and the special
            tokens (the trainer may stop short if the corpus runs out of merges).
        extra_special: extra special tokens appended after ``<pad> <unk> <bos> <eos>``
            (``<image>`` is the LLaVA image placeholder).

    Returns:
        A fast tokenizer with pad/bos/eos/unk set; encoding prepends ``<bos>``.

    Raises:
        ValueError: if ``vocab_size`` cannot hold the byte alphabet and the special tokens.
    """
    special = list(BASE_SPECIAL) + [t for t in extra_special if t not in BASE_SPECIAL]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet ({len(alphabet)}) and "
            f"{len(special)} special tokens need at least {len(alphabet) + len(special)}"
        )
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[t for t in special if t not in BASE_SPECIAL],
        model_max_length=1024,
    )
