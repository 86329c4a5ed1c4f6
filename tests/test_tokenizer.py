import pytest
import torch

from sdlearn import world
from sdlearn.tokenizer import _apply_bpe, _symbols, build_tokenizer, build_vocab_and_merges


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(world.VOCABULARY, tmp_path_factory.mktemp("tok"))


def test_every_world_word_is_one_token(tokenizer):
    for word in world.VOCABULARY:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))  # BOS word EOS
        assert tokenizer.convert_ids_to_tokens(ids[1]) == word + "</w>"


def test_our_bpe_agrees_with_transformers(tokenizer):
    vocab, merges = build_vocab_and_merges(world.VOCABULARY)
    ranks = {pair: i for i, pair in enumerate(merges)}
    for text in ["zebra", "circles", "redder", "a", "purple"]:
        mine = _apply_bpe(_symbols(text), ranks)
        theirs = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids[1:-1])
        assert mine == theirs


def test_unknown_words_fall_back_to_letters(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)
    assert tokens == ["<|startoftext|>", "z", "e", "b", "r", "a</w>", "<|endoftext|>"]


def test_padding_and_specials_like_sd(tokenizer):
    ids = tokenizer("a red circle", padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, 0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SD 1.x pads with EOS
    assert torch.all(ids[0, 4:] == tokenizer.eos_token_id)
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "a red circle"


def test_bad_words_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no spaces"):
        build_tokenizer(["two words"], tmp_path)
