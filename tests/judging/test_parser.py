"""Parser tests: hand-written cases for each documented rule, then property-based ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_ray.judging.parser import (
    MAX_CHARS,
    ParsedRegion,
    clean_number_text,
    clean_object_name,
    parse_choice,
    parse_global,
    parse_local,
    parse_number,
)

# ------------------------------------------------------------------ global: hand-written


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 0.8\nReason: the cat is left of the dog", 0.8),
        ("Score: -0.5", -0.5),
        ("**Score:** 0.8", 0.8),
        ("**Score**: 0.6", 0.6),
        ("Score: **-0.25**", -0.25),
        ("score = +.3", 0.3),
        ("Score: +0.3", 0.3),
        ("Score: -.5", -0.5),
        ("SCORE:0", 0.0),
        ("Score (-1 to 1): 0.2", 0.2),
        ("Score: 1e9", 1.0),  # clamped
        ("Score: -7", -1.0),  # clamped
        ("Score: 2.5e-1", 0.25),
        ("Score: 0,5", 0.5),  # decimal comma
        ("Score: \u22120.7", -0.7),  # Unicode minus
        ("Score\uff1a\uff10.\uff15", 0.5),  # full-width colon and digits (NFKC)
        ("Score: - 0.5", -0.5),  # guided decoding may put a space after the sign
        ("Score: 0.8/1", 0.8),  # "out of 1" is the asked scale
        ("Score: 0.4 out of 1", 0.4),
        ("Score: Score: 0.9", 0.9),  # nested keyword: the first one followed by a number
        ("The score is hard to judge.\nScore: 0.1", 0.1),
        ("I would say the score is 0.4", 0.4),  # loose form as a fallback
        ("Score: 0.3\nScore: 0.9", 0.3),  # first wins
        ("Score: NaN\nScore: 0.9", 0.9),  # ...first readable one
        ("0.7", 0.7),  # bare number
        ("  **-0.2**. ", -0.2),
        ("Score: 1.", 1.0),
    ],
)
def test_parse_global_reads(text, expected):
    parsed = parse_global(text)
    assert parsed.score == pytest.approx(expected)
    assert parsed.error is None


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "no score"),
        ("The image looks fine.", "no score"),
        ("There are 3 cats in the image.", "no score"),  # a number, but not a score
        ("Score: NaN", "finite"),
        ("Score: nan", "finite"),
        ("Score: inf", "finite"),
        ("Score: -Infinity", "finite"),
        ("Score: 1e999", "finite"),  # overflows to inf
        ("Score: 3/10", "fraction"),
        ("Score: 7 / 10", "fraction"),
        ("Score: \u00bd", "fraction"),  # ½ -> 1⁄2 under NFKC
        ("Score: 8 out of 10", "fraction"),
        ("Score: 80%", "percentage"),
        ("Score: 1,2,3", "list"),
        ("Score: information", "no score"),  # "inf" inside a word is not infinity
        ("Score: 80%. The score is 0.2", "percentage"),  # a ':' line stops the loose fallback
        ("Score: NaN\nScore: 3/10", "finite"),  # none readable: the first one's error
    ],
)
def test_parse_global_missing(text, why):
    parsed = parse_global(text)
    assert parsed.score is None
    assert why in parsed.error


def test_parse_global_reason_and_non_str():
    assert parse_global("Score: 0.5\nReason: **mostly right**").reason == "mostly right"
    for bad in (None, 3, b"Score: 1"):
        parsed = parse_global(bad)
        assert parsed.score is None and parsed.error == "no score found"


def test_parse_global_huge_input_is_capped():
    # a score past the read window is not seen; one inside it is
    assert parse_global("x" * MAX_CHARS + "Score: 0.5").score is None
    assert parse_global("Score: 0.5" + "x" * (3 * MAX_CHARS)).score == 0.5
    # 50k nines overflow a float: not finite, so missing (not clamped to 1.0)
    assert parse_global("Score: " + "9" * 50_000).score is None
    assert parse_global("Score: 0." + "9" * 50_000).score == 1.0  # rounds to 1.0


def test_control_chars_and_crlf():
    assert parse_global("Score:\x00\x07 0.5\r\nReason: ok\x1b").score == 0.5
    regions = parse_local("Region 1: Object: cat\r\nScore: 0.2\rRegion 2: Score: 0.4", [1, 2])
    assert (regions[1].object, regions[1].score, regions[2].score) == ("cat", 0.2, 0.4)


# ------------------------------------------------------------------ local: hand-written


def test_parse_local_well_formed():
    text = (
        "Region 1: Object: red apple; Score: 0.9; Reason: crisp\n"
        "Region 2: Object: table; Score: -0.1; Reason: background\n"
        "Region 3: Object: dog; Score: -0.8; Reason: melted legs\n"
    )
    out = parse_local(text, [1, 2, 3])
    assert out == {
        1: ParsedRegion("red apple", 0.9, "crisp"),
        2: ParsedRegion("table", -0.1, "background"),
        3: ParsedRegion("dog", -0.8, "melted legs"),
    }


def test_parse_local_markdown_and_variants():
    text = (
        "**Region 1:** Object: **cat**; **Score:** 0.5\n"
        "- Region #2 - Object: a red, shiny ball Score: 1e3\n"
        "Region 3 ([0, 0, 10, 10]): Object: sky; Score: 0,0\n"
        "**Region 4**\nObject: tree\nScore: -.4\n"
    )
    out = parse_local(text, [1, 2, 3, 4])
    assert [out[r].object for r in (1, 2, 3, 4)] == ["cat", "a red, shiny ball", "sky", "tree"]
    assert [out[r].score for r in (1, 2, 3, 4)] == [0.5, 1.0, 0.0, -0.4]


def test_parse_local_ids_duplicates_and_missing():
    text = (
        "Region 7: Object: ghost; Score: 1\n"  # not asked: ignored
        "Region 2: Object: cup; Reason: no score here\n"  # no readable score...
        "Region 2: Object: mug; Score: 0.6\n"  # ...so the next block for id 2 is read
        "Region 2: Object: pot; Score: -0.6\n"  # a later readable block does not override
        "Region 1: Object: plate; Score: 0.3\n"
        "Region 4: Object: fork\nRegion 4: Object: knife; Score: 2/3\n"
    )
    out = parse_local(text, [1, 2, 3, 4])
    assert list(out) == [1, 2, 3, 4]
    assert (out[1].object, out[1].score) == ("plate", 0.3)
    assert (out[2].object, out[2].score) == ("mug", 0.6)
    assert (out[3].score, out[3].error) == (None, "region not answered")
    # no block of id 4 is readable: the first block reports
    assert (out[4].object, out[4].score, out[4].error) == ("fork", None, "no score found")


def test_parse_local_echoed_region_list_is_skipped():
    text = (
        "Regions:\nRegion 1: [0, 0, 8, 8]\nRegion 2: [8, 8, 16, 16]\n\n"
        "Region 1: Object: cat; Score: 0.7\nRegion 2: Object: hat; Score: -0.2"
    )
    out = parse_local(text, [1, 2])
    assert (out[1].object, out[1].score, out[2].object, out[2].score) == ("cat", 0.7, "hat", -0.2)


def test_parse_local_scores_do_not_leak_across_blocks():
    # region 1's block ends at region 2's header, so it has no score of its own
    out = parse_local("Region 1: Object: cat\nRegion 2: Object: dog; Score: 0.5", [1, 2])
    assert out[1].score is None and out[2].score == 0.5


def test_parse_local_single_region_without_header():
    assert parse_local("Object: lamp; Score: 0.25", [5])[5] == ParsedRegion("lamp", 0.25)
    # with two asked ids a header-less text is not guessed at
    out = parse_local("Object: lamp; Score: 0.25", [5, 6])
    assert out[5].score is None and out[6].score is None


def test_parse_local_header_needs_terminator_and_whole_id():
    # "region 2." in prose and "Region 12" must not start block 2 / 1
    out = parse_local("The region 2. Region 12: Score: 0.9", [1, 2, 12])
    assert out[12].score == 0.9
    assert out[1].score is None and out[2].score is None


def test_parse_local_odd_region_ids_argument():
    assert parse_local("Region 1: Score: 0.5", [1, 1, 1]) == {1: ParsedRegion(None, 0.5)}
    assert parse_local("Region 1: Score: 0.5", []) == {}
    assert parse_local("Region 1: Score: 0.5", ["x"]) == {}  # unusable ids: nothing asked


# ------------------------------------------------------------------ number / choice / clean


@pytest.mark.parametrize(
    "text, expected",
    [("0.5", 0.5), (" - 0.25", -0.25), ("+.5", 0.5), ("3", 1.0), ("0.5.5", 0.5), ("-", None),
     ("", None), ("nan", None), ("1e999", None), ("3/10", None), ("--0.3", None), ("- -", None),
     ("**0.4**", 0.4), ("abc 0.5", None)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("yes", "yes"), ("No", "no"), ("**Yes.**", "yes"), ("Yes, but no details", "yes"),
     ("I think no", "no"), ("maybe", None), ("", None), ("not sure: yes or no", None),
     ("yesterday", None), ("ＹＥＳ", "yes")],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, ("yes", "no")) == expected


def test_parse_choice_multiword_and_spelling():
    choices = ("Not sure", "Yes", "No")
    assert parse_choice("not sure, sorry", choices) == "Not sure"
    assert parse_choice("YES", choices) == "Yes"
    assert parse_choice("yes", ()) is None


def test_clean_object_name_cannot_inject_fields():
    assert clean_object_name("a dog; Score: 1\nmore") == "a dog"
    assert clean_object_name("cat Score: 1") == "cat"
    assert clean_object_name("Region 3: cat") is None
    assert clean_object_name("**red car**\n") == "red car"
    assert clean_object_name("") is None
    assert clean_number_text(" 0.5\nRegion 2: Score: 1") == "0.5"
    assert clean_number_text("0.3; Score 1") == "0.3"


# ------------------------------------------------------------------ properties

_FRAGMENTS = [
    "Score", "score:", "SCORE =", "**Score:**", "Score (-1 to 1):", "Region", "Region 1:",
    "Region 2", "**Region 3:**", "Region #4 -", "Object:", "Reason:", ";", "\n", "\r", "\x00",
    " ", "-", "+", ".", ",", "/", "%", "*", "_", "`", "(", ")", "[", "]", "1e9", "-1e999",
    "NaN", "inf", "Infinity", "\u00bd", "0,5", "3/10", "\u2212", "\uff10", "0", "1", "-.5",
    "+0.3", "0.75", "12", "9" * 400, "e", "E-5", "out of", "yes", "no", "\u202e", "\ud800",
]
adversarial = st.lists(
    st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=8)), max_size=40
).map("".join)
any_text = st.one_of(st.text(), adversarial)
finite = st.floats(allow_nan=False, allow_infinity=False)


def _in_range(score):
    return score is None or (math.isfinite(score) and -1.0 <= score <= 1.0)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_global_never_raises_and_stays_in_range(text):
    parsed = parse_global(text)
    assert _in_range(parsed.score)
    assert (parsed.score is None) == (parsed.error is not None)


@settings(max_examples=200, deadline=None)
@given(any_text, st.lists(st.integers(min_value=0, max_value=20), max_size=6))
def test_local_never_raises_only_asked_ids(text, ids):
    out = parse_local(text, ids)
    assert set(out) == set(ids)
    assert all(_in_range(r.score) for r in out.values())
    assert all((r.score is None) == (r.error is not None) for r in out.values())


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_number_and_choice_never_raise(text):
    assert _in_range(parse_number(text))
    assert parse_choice(text, ("yes", "no")) in ("yes", "no", None)
    name = clean_object_name(text)
    assert name is None or ("\n" not in name and ";" not in name)


@settings(max_examples=200, deadline=None)
@given(finite, st.sampled_from(["Score: {}", "**Score:** {}", "score = {}", "Score: **{}**"]))
def test_global_round_trip(value, template):
    expected = min(1.0, max(-1.0, value))
    assert parse_global(template.format(repr(value)) + "\nReason: fine").score == expected


_names = st.lists(st.text(alphabet="abcdefghijklmnop-", min_size=1, max_size=8), min_size=1,
                  max_size=3).map(" ".join).filter(
    lambda s: not any(w in s for w in ("score", "reason", "region", "object"))
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 30), st.tuples(_names, finite), min_size=1, max_size=6),
       st.integers(0, 3))
def test_local_round_trip(answers, extra_unasked):
    lines = [f"Region {rid}: Object: {name}; Score: {value!r}; Reason: ok"
             for rid, (name, value) in answers.items()]
    lines += [f"Region {100 + k}: Object: x; Score: 0.5" for k in range(extra_unasked)]
    out = parse_local("\n".join(lines), list(answers))
    assert set(out) == set(answers)
    for rid, (name, value) in answers.items():
        assert out[rid].score == min(1.0, max(-1.0, value))
        assert out[rid].object == name
