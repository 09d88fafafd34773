"""Tolerant readers for the judge's free-text answers (SPEC section 2.3).

Every function here takes any ``str`` and never raises. A score that cannot be read is
``None`` (with a short ``error`` saying why); it is never guessed. Rules, in one place:

* Text is NFKC-normalised first (full-width digits and colons become ASCII), control
  characters become spaces, ``\\r\\n`` becomes ``\\n``, and only the first
  :data:`MAX_CHARS` characters are read.
* A score is the number after the word ``score`` (``Score: 0.8``, ``**Score:** -0.5``,
  ``score = +.3``, ``Score (-1 to 1): 0.2``). Lines with ``:`` or ``=`` after the word are
  preferred; ``score is 0.4`` / ``score 0.4`` is the fallback. The first READABLE such
  number wins (``Score: NaN ... Score: 0.5`` -> 0.5); when every one is unreadable the first
  one's error is reported. A text that is nothing but a number (``"0.7"``, ``"**-0.2**"``)
  is read as that number.
* Numbers: ``1``, ``-.5``, ``+0.3``, ``1e9``, ``0,5`` (decimal comma = 0.5), with ASCII
  ``-``, ``+`` or the Unicode minus ``\u2212`` as sign. Finite values are clamped to [-1, 1]
  (``1e9`` -> 1.0). ``NaN`` and ``inf`` (also overflow like ``1e999``) are missing.
* Fractions (``3/10``, ``½``), percentages (``80%``), ``8 out of 10`` and comma lists
  (``1,2,3``) are missing: they mean the model picked its own scale, and guessing which
  one would turn a parse failure into a confident score. ``x/1`` and ``x out of 1`` are
  read as ``x``.
* Regions: a block starts at ``Region <id>`` followed by ``:``, ``-``, ``)``, ``]`` or a
  line end (markdown around it is fine: ``**Region 2:**``, ``Region #2 -``). The block runs
  to the next region header. Ids not asked for are ignored. If an id has several blocks,
  the first block whose score can be read wins (so a model that first echoes the region
  list, ``Region 1: [0, 0, 8, 8]``, and then answers is still read); when none can, the
  first block gives the object name and the error. Asked ids with no block stay missing.
  When exactly one id is asked and the text has no region header at all, the whole text is
  that region's block (a model answering a single-region retry often drops the header).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

#: longest prefix of an answer that is read (a judge answer is a few thousand characters)
MAX_CHARS = 200_000
#: longest object name / reason kept
MAX_FIELD_CHARS = 200

_MARK = "*_`~"
_NUM = r"(?:[0-9]+(?:[.,][0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,6})?"
_NONFINITE = r"(?:nan|inf(?:inity)?)(?![a-z])"
_VALUE = rf"(?P<sign>[+\-\u2212]?)[ \t]{{0,3}}(?:(?P<num>{_NUM})|(?P<bad>{_NONFINITE}))"
# "Score" + optional echoed range in brackets + separator + value
_SCORE_STRICT = re.compile(
    rf"\bscores?\b[{_MARK}\s]{{0,8}}(?:[(\[][^()\[\]\n]{{0,40}}[)\]][{_MARK}\s]{{0,8}})?"
    rf"[:=][{_MARK}\s\"'(\[]{{0,12}}{_VALUE}",
    re.IGNORECASE,
)
_SCORE_LOOSE = re.compile(
    rf"\bscores?\b[{_MARK}\s]{{0,8}}(?:(?:is|of|was)\b[{_MARK}\s]{{0,8}})?"
    rf"[{_MARK}\"'(\[]{{0,4}}{_VALUE}",
    re.IGNORECASE,
)
_BARE = re.compile(rf"^[{_MARK}\s\"'(\[]*{_VALUE}[{_MARK}\s\"')\].]*$", re.IGNORECASE)
_LEADING_NUMBER = re.compile(rf"^[{_MARK}\s\"'(\[]*{_VALUE}", re.IGNORECASE)
_AFTER_FRACTION = re.compile(
    r"[ \t]{0,3}(?:[/\u2044\u2215]|out[ \t]+of\b)[ \t]{0,3}([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE
)
_AFTER_PERCENT = re.compile(r"[ \t]{0,3}%")
_AFTER_LIST = re.compile(r",[0-9]")
_HEADER = re.compile(
    rf"\bregion[ \t]{{0,3}}(?:id[ \t]{{0,3}})?#?[ \t]{{0,3}}(?P<id>[0-9]{{1,6}})(?![0-9.,])"
    rf"[{_MARK} \t]{{0,6}}(?:(?:\([^\n()]{{0,80}}\)|\[[^\n\[\]]{{0,80}}\])[{_MARK} \t]{{0,6}})?"
    rf"(?:[:\-)\]\u2013\u2014]|\n|$)",
    re.IGNORECASE,
)
_OBJECT = re.compile(
    rf"\bobject(?:[ \t]+name)?[{_MARK} \t]{{0,6}}[:=][{_MARK} \t\"']*(?P<obj>[^;\n|]*)",
    re.IGNORECASE,
)
_REASON = re.compile(
    rf"\breason[{_MARK} \t]{{0,6}}[:=][{_MARK} \t]*(?P<reason>[^\n]*)", re.IGNORECASE
)
# C0/C1 control characters (except \t and \n) and lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_FIELD_KEYWORD = re.compile(r"\b(?:score|reason|region)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedScore:
    """One score read from an answer.

    Attributes:
        score: finite value in [-1, 1], or None when it could not be read.
        reason: the text after ``Reason:`` when present.
        error: why ``score`` is None (None when it was read).
    """

    score: float | None
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ParsedRegion:
    """One region read from a local answer.

    Attributes:
        object: the object name the model gave, or None.
        score: finite value in [-1, 1], or None when missing.
        reason: the text after ``Reason:`` in the region's block, when present.
        error: why ``score`` is None (None when it was read).
    """

    object: str | None
    score: float | None
    reason: str | None = None
    error: str | None = None


def normalize_text(text: object) -> str:
    """NFKC-normalised, control-free, ``\\n``-only, length-capped copy of ``text``."""
    if not isinstance(text, str):
        return ""
    text = text[: MAX_CHARS * 2]
    try:
        text = unicodedata.normalize("NFKC", text)
    except Exception:  # pragma: no cover - keep the raw text if normalisation fails
        pass
    text = text[:MAX_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(" ", text)


def _clamp(value: float) -> float:
    return min(1.0, max(-1.0, value))


def _value_from_match(m: re.Match, text: str) -> tuple[float | None, str | None]:
    """Score (clamped) or the reason it is missing, from a match of ``_VALUE``."""
    if m.group("bad") is not None:
        return None, "score is not a finite number"
    sign = -1.0 if m.group("sign") in ("-", "\u2212") else 1.0
    raw = m.group("num")
    tail = text[m.end() : m.end() + 40]
    if _AFTER_LIST.match(tail):
        return None, "score is a list of numbers"
    if _AFTER_PERCENT.match(tail):
        return None, "score given as a percentage (scale is ambiguous)"
    frac = _AFTER_FRACTION.match(tail)
    if frac is not None and float(frac.group(1)) != 1.0:
        return None, "score given as a fraction (scale is ambiguous)"
    try:
        value = sign * float(raw.replace(",", "."))
    except ValueError:  # pragma: no cover - the regex only admits float syntax
        return None, "score is not a number"
    if not math.isfinite(value):
        return None, "score is not a finite number"
    return _clamp(value), None


def _find_score(text: str) -> tuple[float | None, str | None]:
    """First score in normalised ``text`` (see module rules)."""
    for pattern in (_SCORE_STRICT, _SCORE_LOOSE):
        first_error = None
        for m in pattern.finditer(text):
            score, error = _value_from_match(m, text)
            if score is not None:
                return score, None
            first_error = first_error or error
        if first_error is not None:
            return None, first_error
    m = _BARE.match(text)
    if m is not None:
        return _value_from_match(m, text)
    return None, "no score found"


def _clean_field(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().strip(_MARK + " \t\"'.,:")
    value = value[:MAX_FIELD_CHARS].strip()
    return value or None


def _find_reason(text: str) -> str | None:
    m = _REASON.search(text)
    return _clean_field(m.group("reason")) if m else None


def clean_object_name(text: object) -> str | None:
    """A one-line object name safe to put into an answer skeleton.

    Keeps the first line, cuts at ``;`` / ``|`` and before any ``score``, ``reason`` or
    ``region`` word (so the name cannot inject a score or a region header), strips markdown
    and quotes. Returns None when nothing is left.
    """
    text = normalize_text(text)
    first = text.split("\n", 1)[0]
    first = re.split(r"[;|]", first, maxsplit=1)[0]
    kw = _FIELD_KEYWORD.search(first)
    if kw is not None:
        first = first[: kw.start()]
    return _clean_field(first)


def clean_number_text(text: object) -> str:
    """First line of a guided numeric answer, without ``;``/``|`` tails (never raises)."""
    first = normalize_text(text).split("\n", 1)[0]
    first = re.split(r"[;|]", first, maxsplit=1)[0]
    return _FIELD_KEYWORD.split(first, maxsplit=1)[0].strip()


def parse_global(text: object) -> ParsedScore:
    """Read a global answer (``Score: <n>`` then ``Reason: <text>``). Never raises."""
    try:
        norm = normalize_text(text)
        score, error = _find_score(norm)
        return ParsedScore(score=score, reason=_find_reason(norm), error=error)
    except Exception as exc:  # pragma: no cover - defensive: the parser must never raise
        return ParsedScore(score=None, error=f"parser error: {type(exc).__name__}")


def _parse_block(block: str) -> ParsedRegion:
    obj_match = _OBJECT.search(block)
    obj = None
    if obj_match is not None:
        raw_obj = obj_match.group("obj")
        kw = _FIELD_KEYWORD.search(raw_obj)
        obj = _clean_field(raw_obj[: kw.start()] if kw else raw_obj)
    score, error = _find_score(block)
    return ParsedRegion(object=obj, score=score, reason=_find_reason(block), error=error)


def parse_local(text: object, region_ids: Iterable[int]) -> dict[int, ParsedRegion]:
    """Read a local answer: one ``Region <id>: Object: ..; Score: ..`` block per region.

    Args:
        text: the model's answer (any string).
        region_ids: ids that were asked about.

    Returns:
        One entry per asked id (each id once); a region that was not answered, or whose
        score could not be read, has ``score=None`` and an ``error``. Never raises.
    """
    try:
        wanted = list(dict.fromkeys(int(i) for i in region_ids))
    except (TypeError, ValueError):
        wanted = []
    try:
        norm = normalize_text(text)
        headers = list(_HEADER.finditer(norm))
        out: dict[int, ParsedRegion] = {}
        if not headers and len(wanted) == 1:
            out[wanted[0]] = _parse_block(norm)
        for k, m in enumerate(headers):
            rid = int(m.group("id"))
            if rid not in wanted or (rid in out and out[rid].score is not None):
                continue
            end = headers[k + 1].start() if k + 1 < len(headers) else len(norm)
            region = _parse_block(norm[m.end() : end])
            if rid not in out or region.score is not None:  # first readable block wins
                out[rid] = region
        for rid in wanted:
            out.setdefault(rid, ParsedRegion(object=None, score=None, error="region not answered"))
        return {rid: out[rid] for rid in wanted}
    except Exception as exc:  # pragma: no cover - defensive: the parser must never raise
        err = f"parser error: {type(exc).__name__}"
        return {rid: ParsedRegion(object=None, score=None, error=err) for rid in wanted}


def parse_number(text: object) -> float | None:
    """The number ``text`` starts with (guided-mode answers; leading spaces and markdown are
    skipped), clamped to [-1, 1]. None if the text does not start with a number, or it is
    not finite, a fraction, a percentage or a list. Reads exactly what :func:`parse_global`
    reads after ``Score: ``. Never raises."""
    try:
        norm = normalize_text(text)
        m = _LEADING_NUMBER.match(norm)
        if m is None:
            return None
        return _value_from_match(m, norm)[0]
    except Exception:  # pragma: no cover - defensive
        return None


def parse_choice(text: object, choices: Sequence[str]) -> str | None:
    """Which of ``choices`` the answer gives (returned as spelled in ``choices``).

    The answer's first word(s) decide when they are a choice (``"Yes, it is"`` -> yes);
    otherwise the one choice that appears as a whole word anywhere; several different
    choices anywhere, or none, give None. Case, markdown and punctuation are ignored.
    Never raises.
    """
    try:
        norm = normalize_text(text).casefold()
        words = re.findall(r"[^\W_]+", norm)
        options = [(c, re.findall(r"[^\W_]+", normalize_text(c).casefold())) for c in choices]
        options = [(c, w) for c, w in options if w]
        for c, w in sorted(options, key=lambda cw: -len(cw[1])):
            if words[: len(w)] == w:
                return c
        found = set()
        for c, w in options:
            if any(words[i : i + len(w)] == w for i in range(len(words) - len(w) + 1)):
                found.add(c)
        return found.pop() if len(found) == 1 else None
    except Exception:  # pragma: no cover - defensive
        return None
