"""Token-level constraints for guided answers, shared by every transformers backend.

:class:`ScoreGrammar` lets a model write only a judge score in [-1, 1]: an optional leading
space, an optional ``-``, then ``0``, ``0.d``, ``0.dd``, ``1``, ``1.0`` or ``1.00``; the end of
sequence is allowed only once the text is a complete score. Every token is checked against
the grammar as a string, so multi-character BPE tokens work.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

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


def allowed_choice_tokens(first_tokens: Sequence[int], vocab: int) -> torch.Tensor:
    """``[V]`` bool mask allowing only ``first_tokens``."""
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[list(first_tokens)] = True
    return allowed
