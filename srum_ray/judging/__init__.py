"""Judging (SPEC section 2.3): prompts, tolerant answer parsing, the judge and the box filter."""

from srum_ray.judging.filter import BoxFilter, FilterStats
from srum_ray.judging.judge import Judge, JudgeStats, Judgement, derive_seed
from srum_ray.judging.parser import (
    ParsedRegion,
    ParsedScore,
    parse_choice,
    parse_global,
    parse_local,
    parse_number,
)

__all__ = [
    "BoxFilter",
    "FilterStats",
    "Judge",
    "JudgeStats",
    "Judgement",
    "ParsedRegion",
    "ParsedScore",
    "derive_seed",
    "parse_choice",
    "parse_global",
    "parse_local",
    "parse_number",
]
