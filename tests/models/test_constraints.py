"""The score grammar for guided judging."""

import pytest

from srum_ray.models.constraints import is_complete_score, is_score_prefix


@pytest.mark.parametrize("text", ["", " ", "-", " -", "0", "0.", "0.5", "-0.25", "1", "1.", "1.00", " -1.0"])
def test_prefixes(text):
    assert is_score_prefix(text)


@pytest.mark.parametrize("text", ["2", "1.5", "0.123", "--1", "00", "1-", "+1", "0.5 ", "a", "  1"])
def test_not_prefixes(text):
    assert not is_score_prefix(text)


@pytest.mark.parametrize(
    "text, complete",
    [("0", True), ("-1", True), ("0.75", True), (" 1.0", True), ("0.", False), ("-", False), ("", False)],
)
def test_complete(text, complete):
    assert is_complete_score(text) is complete
    if complete:
        assert -1.0 <= float(text) <= 1.0
