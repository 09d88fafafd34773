"""docs/RESULTS.md from per-seed demo results (srum_ray.shapes.results), on made-up results."""

from __future__ import annotations

import pytest

from srum_ray.shapes.constraints import CATEGORIES
from srum_ray.shapes.results import KEEP_MARKER, paper_claims, write_results

#: overall accuracy per arm and seed (3 seeds)
OVERALL = {
    "base": [0.10, 0.08, 0.12],
    "sft": [0.11, 0.09, 0.13],
    "srum": [0.18, 0.15, 0.17],
    "sample_level": [0.05, 0.04, 0.06],
    "binarized": [0.10, 0.08, 0.11],
    "no_global": [0.12, 0.10, 0.11],
    "no_constraint": [0.14, 0.12, 0.16],
}


def _seed(k: int) -> dict:
    test = {}
    for arm, xs in OVERALL.items():
        test[arm] = {**{c: xs[k] for c in CATEGORIES}, "overall": xs[k], "seen": xs[k], "unseen": xs[k],
                     "per_kind": {"exists": 0.5}}
    cats = {c: 0.1 for c in CATEGORIES}
    gap = {"generation": {**cats, "overall": OVERALL["base"][k]},
           "understanding_rendered": {**cats, "overall": 0.99},
           "understanding_generated": {**cats, "overall": 0.9}}
    return {"test": test, "gap": gap, "seconds": 600.0, "n_test": 150}


def test_results_doc_reports_targets_ranking_and_claims(tmp_path):
    doc = tmp_path / "RESULTS.md"
    text = write_results(doc, [_seed(k) for k in range(3)], [0, 1, 2], "python -m srum_ray.shapes.results --seeds 0 1 2", "configs/shapes.yaml")
    assert doc.read_text() == text
    # SRUM - base per seed: +8, +7, +5 -> mean +6.7, sd 1.5
    assert "SRUM - base, overall test accuracy: +6.7 ± 1.5 points (per seed: +8.0, +7.0, +5.0); target >= +5: met." in text
    assert "SRUM - SFT: +5.7 ± 1.5 points" in text and "target > 0: met." in text
    assert "| srum | " + " | ".join(["16.7 ± 1.5"] * (len(CATEGORIES) + 1)) + " |" in text
    assert "target understanding > generation: met." in text
    assert "Ranking found (best first, mean overall): srum (16.7) > no_constraint (14.0)" in text
    assert "full SRUM is best: holds here (srum - no_constraint: +2.7 ± 1.5 points)" in text
    assert "sample-level reward is worst: holds here (sample_level - binarized: -4.7 ± 0.6 points)" in text
    # binarized - sft: -1, -1, -2 -> -1.3 ± 0.6
    assert "binarized is below SFT: holds here (binarized - sft: -1.3 ± 0.6 points)" in text
    # no_global - no_constraint: -2, -2, -5 -> -3.0 ± 1.7
    assert "hurts more than dropping the constraint: holds here (no_global - no_constraint: -3.0 ± 1.7 points)" in text


def test_claims_say_when_they_fail_and_when_a_gap_is_noise():
    agg = {a: {"overall": xs} for a, xs in OVERALL.items()}
    agg["binarized"] = {"overall": [0.12, 0.08, 0.15]}  # above SFT on average, by less than its spread
    claims = {c: (holds, detail) for c, holds, detail in paper_claims(agg)}
    holds, detail = claims["binarized is below SFT"]
    assert not holds and detail == "binarized - sft: +0.7 ± 1.5 points (within the seed spread)"
    # without SFT or no_constraint the claims that need them are not made
    del agg["sft"], agg["no_constraint"]
    assert [c for c, _, _ in paper_claims(agg)] == ["full SRUM is best", "sample-level reward is worst"]


def test_rewrite_keeps_the_hand_written_sections(tmp_path):
    doc = tmp_path / "RESULTS.md"
    per_seed = [_seed(k) for k in range(3)]
    write_results(doc, per_seed, [0, 1, 2], "cmd", "configs/shapes.yaml")
    hand = "\n## A diagnostic\nWritten by a person.\n"
    doc.write_text(doc.read_text() + "\n" + KEEP_MARKER + hand)
    per_seed[0]["test"]["srum"]["overall"] = 0.30
    text = write_results(doc, per_seed, [0, 1, 2], "cmd", "configs/shapes.yaml")
    assert text.endswith(KEEP_MARKER + hand) and text.count(KEEP_MARKER) == 1
    assert "per seed: +20.0, +7.0, +5.0" in text  # the generated part is new
    # a doc without the marker is replaced whole
    doc.write_text("old notes\n")
    assert "old notes" not in write_results(doc, per_seed, [0, 1, 2], "cmd", "configs/shapes.yaml")


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_fewer_seeds_still_write(tmp_path, seeds):
    text = write_results(tmp_path / "R.md", [_seed(k) for k in seeds], seeds, "cmd", "c.yaml")
    assert f"{len(seeds)} seeds" in text


def test_constraint_table_and_srum_changes_per_kind(tmp_path):
    per_seed = [_seed(k) for k in range(3)]
    exists = {"base": [0.40, 0.45, 0.50], "sft": [0.38, 0.44, 0.47], "srum": [0.42, 0.48, 0.56]}
    for k, res in enumerate(per_seed):
        for arm, table in res["test"].items():
            table["per_kind"] = {"exists": exists.get(arm, [0.3] * 3)[k], "relation": 0.1}
    text = write_results(tmp_path / "RESULTS.md", per_seed, [0, 1, 2], "cmd", "configs/shapes.yaml")
    section = text.split("## Constraints that hold (test)", 1)[1].split("## ", 1)[0]
    assert "| model | exists | relation |" in section  # CONSTRAINT_KINDS order, kinds seen only
    assert "| base | 45.0 ± 5.0 | 10.0 ± 0.0 |" in section
    # srum - base: +2, +3, +6 -> +3.7 ± 2.1; srum - sft: +4, +4, +9 -> +5.7 ± 2.9
    assert "SRUM - base, points per kind (per seed): exists +3.7 ± 2.1 (+2.0, +3.0, +6.0); relation +0.0 ± 0.0" in section
    assert "SRUM - sft, points per kind (per seed): exists +5.7 ± 2.9 (+4.0, +4.0, +9.0)" in section


def test_results_without_constraint_kinds_still_write(tmp_path):
    per_seed = [_seed(k) for k in range(2)]
    for res in per_seed:
        for table in res["test"].values():
            del table["per_kind"]
    text = write_results(tmp_path / "RESULTS.md", per_seed, [0, 1], "cmd", "configs/shapes.yaml")
    assert "## Constraints that hold (test)" in text and "| model | exists" not in text
