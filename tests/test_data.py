"""Prompt files and the deterministic choice of a round's samples."""

import pytest

from srum_ray.data import PromptFileError, load_prompts, read_prompt_file, round_samples


def test_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("# comment\nfirst prompt\n\n  second prompt  \n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "third"}\n\n{"prompt": " fourth "}\n')
    assert load_prompts([tmp_path / "a.txt", tmp_path / "b.jsonl"]) == [
        "first prompt", "second prompt", "third", "fourth",
    ]


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("e.txt", "# only comments\n\n", "holds no prompts"),
        ("j.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "j.jsonl:2: not valid JSON"),
        ("k.jsonl", '{"text": "x"}\n', 'k.jsonl:1: needs a non-empty string "prompt"'),
        ("l.jsonl", '["x"]\n', "l.jsonl:1"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(PromptFileError, match=fragment.replace("[", r"\[")):
        read_prompt_file(tmp_path / name)


def test_missing_and_binary(tmp_path):
    with pytest.raises(PromptFileError, match="prompt file not found"):
        read_prompt_file(tmp_path / "nope.txt")
    with pytest.raises(PromptFileError, match="not a file"):
        read_prompt_file(tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PromptFileError, match="cannot be read"):
        read_prompt_file(tmp_path / "bin.txt")
    with pytest.raises(PromptFileError, match="data.prompts is empty"):
        load_prompts([])


def test_round_samples_are_deterministic_and_cover_the_pool():
    pool = [f"p{i}" for i in range(10)]
    r0 = round_samples(pool, 0, 4, 2, run_seed=3)
    assert r0 == round_samples(pool, 0, 4, 2, run_seed=3)
    assert len(r0) == 8 and len({s.id for s in r0}) == 8 and len({s.seed for s in r0}) == 8
    assert r0[0].prompt == r0[1].prompt  # images_per_prompt draws of one prompt
    # rounds 0..4 at 2 prompts each pass over the pool exactly once
    seen = [s.prompt for r in range(5) for s in round_samples(pool, r, 2, 1, run_seed=3)]
    assert sorted(seen) == sorted(pool)
    assert round_samples(pool, 1, 4, 1, run_seed=3) != round_samples(pool, 1, 4, 1, run_seed=4)
    unshuffled = round_samples(pool, 1, 3, 1, run_seed=0, shuffle=False)
    assert [s.prompt for s in unshuffled] == ["p3", "p4", "p5"]
