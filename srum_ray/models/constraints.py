"""Token-level constraints for guided answers, shared by every transformers backend.

:class:`ScoreGrammar` lets a model write only a judge score in [-1, 1]: an optional leading
space, an optional ``-``, then ``0``, ``0.d``, ``0.dd``, ``1``, ``1.0`` or ``1.00``; the end of
sequence is allowed only once the text is a complete score. Every token is checked against
the grammar as a string, so multi-character BPE tokens work.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from srum_ray.models.base import AnswerConstraint

_PREFIX = re.compile(r"^ ?-?(|0|0\.\d{0,2}|1|1\.0{0,2})$")
_COMPLETE = re.compile(r"^ ?-?(0|0\.\d{1,2}|1|1\.0{1,2})$")
_CHARS = frozenset("0123456789.- ")


def is_score_prefix(text: str) -> bool:
    """Whether ``text`` can still grow into a complete score."""
    return bool(_PREFIX.match(text))


def is_complete_score(text: str) -> bool:
    """Whether ``text`` is a complete score in [-1, 1] under the grammar."""
    return bool(_COMPLETE.match(text))


class ScoreGrammar(LogitsProcessor):
    """Masks every token that would leave the score grammar (see module docstring).

    Args:
        tokenizer: the model's tokenizer.
        prompt_length: length of the (left-padded) prompt in ``input_ids``; tokens after it
            are the answer so far.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int) -> None:
        self.prompt_length = prompt_length
        self.eos = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        self.pieces: dict[int, str] = {}
        for idx in range(len(tokenizer)):
            if idx in special:
                continue
            text = tokenizer.decode([idx])
            if text and set(text) <= _CHARS:
                self.pieces[idx] = text
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.ones_like(scores, dtype=torch.bool)  # True = forbidden
        for row in range(input_ids.shape[0]):
            done = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
            allowed = [i for i, p in self.pieces.items() if i < scores.shape[-1] and is_score_prefix(done + p)]
            if is_complete_score(done) and self.eos is not None:
                allowed.append(self.eos)
            if not allowed and self.eos is not None:  # cannot happen from a valid prefix; stop
                allowed = [self.eos]
            mask[row, allowed] = False
        return scores.masked_fill(mask, float("-inf"))


class AllowedTokens(LogitsProcessor):
    """Sets the score of every token outside ``allowed`` (a ``[V]`` bool mask) to ``-inf``."""

    def __init__(self, allowed: torch.Tensor) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        n = min(mask.numel(), self.allowed.numel())
        mask[:n] = self.allowed[:n].to(scores.device)
        return scores.masked_fill(~mask, float("-inf"))


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Mapping[str, torch.Tensor],
    *,
    max_new_tokens: int,
    constraint: AnswerConstraint | None,
    temperature: float,
    seed: int | None,
    device: torch.device,
    choice_tokens: Mapping[int, int] | None = None,
    vocab: int | None = None,
    **generation: Any,
) -> list[str]:
    """``model.generate`` on left-padded ``inputs`` under an answer constraint; decoded answers.

    Shared by every transformers judge. ``"number"`` applies :class:`ScoreGrammar`;
    ``"choice"`` allows only the token ids in ``choice_tokens`` (token id -> index into
    ``constraint.choices``), generates one token and returns that choice. Greedy when
    ``temperature == 0``; sampling with a ``seed`` is reproducible and leaves torch's global
    RNG as it was. ``generation`` adds GenerationConfig fields (pad/eos/bos ids).
    """
    prompt_len = inputs["input_ids"].shape[1]
    procs = LogitsProcessorList()
    if constraint is not None and constraint.kind == "choice":
        if not choice_tokens:
            raise ValueError("a 'choice' constraint needs the choices' token ids")
        procs.append(AllowedTokens(allowed_choice_tokens(list(choice_tokens), vocab or len(tokenizer))))
        max_new_tokens = 1
    elif constraint is not None:
        procs.append(ScoreGrammar(tokenizer, prompt_len))
    sample = temperature > 0
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else 1.0,
        **generation,
    )
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(int(seed))
        out = model.generate(**inputs, generation_config=cfg, logits_processor=procs)
    new = out[:, prompt_len:]
    if constraint is not None and constraint.kind == "choice":
        return [constraint.choices[choice_tokens[int(row[0])]] for row in new]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def allowed_choice_tokens(first_tokens: Sequence[int], vocab: int) -> torch.Tensor:
    """``[V]`` bool mask allowing only ``first_tokens``."""
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[list(first_tokens)] = True
    return allowed
