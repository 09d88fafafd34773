import pytest
from transformers import PreTrainedTokenizerFast

from srum_ray.models.tokenizer import build_tokenizer

TEXTS = [
    "Score: -0.5\nReason: the red cube is left of the blue ball.",
    "Region 3: Object: a yellow star; score 0.9. Answer: yes",
    "unicode survives byte-level BPE: café ✓ 猫",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_special_tokens_have_fixed_ids(tok):
    assert len(tok) == 512
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("<image>") == 4
    # encoding prepends bos only; <image> stays one token
    ids = tok("a <image> b")["input_ids"]
    assert ids[0] == 2 and ids.count(4) == 1 and 3 not in ids


def test_extra_special_tokens_follow_the_base_ones():
    tok = build_tokenizer(extra_special=("<image>", "<box>"))
    assert tok.convert_tokens_to_ids("<box>") == 5
    assert tok.encode("x<box>y", add_special_tokens=False).count(5) == 1


def test_deterministic(tok):
    again = build_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert [again(t)["input_ids"] for t in TEXTS] == [tok(t)["input_ids"] for t in TEXTS]


def test_byte_level_round_trip_and_judging_vocabulary(tok):
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # the corpus makes the judging words single tokens
    for word in ("Score", "Reason", "Region", "Object", " yes", " no"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == len(tok)
    assert loaded.special_tokens_map == tok.special_tokens_map
    assert loaded.convert_tokens_to_ids("<image>") == 4
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="vocab_size=100"):
        build_tokenizer(vocab_size=100)
