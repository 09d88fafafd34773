"""Prompt files and the deterministic choice of each round's prompts and seeds.

Formats: ``.txt`` (one prompt a line; blank lines and lines starting with ``#`` skipped) and
``.jsonl`` (one object a line with a non-empty string ``"prompt"``). A bad file raises
:class:`PromptFileError` naming the file and line; nothing is silently skipped except blank
and comment lines.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


class PromptFileError(ValueError):
    """A prompt file is missing, unreadable or malformed (message names file and line)."""


def cwd_hint(path: Path) -> str:
    """For a missing relative path: where it was looked for (configs name paths from the
    repository root)."""
    return "" if path.is_absolute() else f" (relative to {Path.cwd()}: run from the repository root)"


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of one file, in file order."""
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"prompt file not found: {path}{cwd_hint(path)}")
    if not path.is_file():
        raise PromptFileError(f"prompt path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"prompt file {path} cannot be read: {e}") from e
    prompts: list[str] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or (not jsonl and line.startswith("#")):
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptFileError(f'{path}:{lineno}: needs a non-empty string "prompt"')
            prompts.append(prompt.strip())
        else:
            prompts.append(line)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return prompts


def load_prompts(paths: Sequence[str | Path]) -> list[str]:
    """All prompts of ``paths`` in order."""
    if not paths:
        raise PromptFileError("data.prompts is empty: name at least one prompt file")
    out: list[str] = []
    for p in paths:
        out.extend(read_prompt_file(p))
    return out


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a round is drawn from."""

    id: str
    prompt: str
    seed: int


def round_samples(
    prompts: Sequence[str],
    round_index: int,
    prompts_per_round: int,
    images_per_prompt: int,
    run_seed: int,
    shuffle: bool = True,
) -> list[SampleSpec]:
    """The samples of round ``round_index``: a pure function of its arguments.

    Prompts are taken from a permutation of the pool (a fresh one per pass over the pool when
    ``shuffle``), so every prompt is used once before any repeats. Seeds are distinct per
    (run seed, round, sample). A resumed run therefore redraws exactly the same round.
    """
    n = len(prompts)
    start = round_index * prompts_per_round
    chosen: list[int] = []
    for k in range(start, start + prompts_per_round):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        if shuffle:
            random.Random(run_seed * 1_000_003 + epoch).shuffle(order)
        chosen.append(order[pos])
    out = []
    rng = random.Random(f"{run_seed}/{round_index}")
    for i, pi in enumerate(chosen):
        for j in range(images_per_prompt):
            out.append(
                SampleSpec(
                    id=f"r{round_index:04d}-{i:05d}-{j}",
                    prompt=prompts[pi],
                    seed=rng.randrange(2**31),
                )
            )
    return out
