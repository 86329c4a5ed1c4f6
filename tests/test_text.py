import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from sdlearn import text


@pytest.fixture(scope="module")
def tokenizer(tiny_components):
    return tiny_components.tokenizer


@pytest.fixture(scope="module")
def text_encoder(tiny_components):
    return tiny_components.text_encoder


@pytest.fixture(scope="module")
def tiny_clip(tiny_components):
    """A tiny random CLIPModel (text + vision) over the tiny tokenizer's vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_components.tokenizer
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, projection_dim=16),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, hidden_act="quick_gelu", projection_dim=16),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIPModel(config).eval()


LONG_PROMPT = " ".join(["a red circle on the left", "the blue square on the right"] * 8)  # 96 words, 1 token each


# --------------------------------------------------------------------------------------
# tokenize, truncated_text, token_table
# --------------------------------------------------------------------------------------


def test_tokenize_pads_with_bos_eos_like_sd(tokenizer):
    ids = text.tokenize(tokenizer, ["a red circle", ""])
    assert ids.shape == (2, tokenizer.model_max_length) and ids.dtype == torch.int64
    assert ids[:, 0].tolist() == [tokenizer.bos_token_id] * 2
    assert ids[0, 4].item() == tokenizer.eos_token_id and ids[1, 1].item() == tokenizer.eos_token_id
    assert torch.all(ids[0, 5:] == tokenizer.pad_token_id)
    # a single string is a batch of one, the same row
    torch.testing.assert_close(text.tokenize(tokenizer, "a red circle"), ids[:1])


def test_tokenize_matches_the_pipeline_tokenizer_call(tokenizer):
    prompts = ["a red circle on the left", "the blue square"]
    expected = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    torch.testing.assert_close(text.tokenize(tokenizer, prompts), expected)


def test_tokenize_rejects_non_strings(tokenizer):
    with pytest.raises(TypeError, match="list of str"):
        text.tokenize(tokenizer, [1, 2])


def test_long_prompt_is_truncated_with_a_warning_naming_the_lost_words(tokenizer):
    with pytest.warns(text.PromptTruncatedWarning, match="never sees") as caught:
        ids = text.tokenize(tokenizer, LONG_PROMPT)
    assert ids.shape == (1, tokenizer.model_max_length)
    assert ids[0, -1].item() == tokenizer.eos_token_id            # truncation keeps the EOS
    dropped = text.truncated_text(tokenizer, LONG_PROMPT)
    words = LONG_PROMPT.split()
    kept = tokenizer.model_max_length - 2                            # one token per word here
    assert dropped == " ".join(words[kept:])
    assert repr(dropped) in str(caught[0].message)
    assert text.truncated_text(tokenizer, "a red circle") == ""


def test_no_warning_when_it_fits_or_when_asked(tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text.tokenize(tokenizer, "a red circle on the left")
        text.tokenize(tokenizer, LONG_PROMPT, warn=False)


def test_token_table_names_specials_and_folds_padding(tokenizer):
    ids = text.tokenize(tokenizer, "a red circle")
    table = text.token_table(tokenizer, ids)
    lines = table.splitlines()
    assert lines[0].split() == ["position", "id", "token"]
    assert "BOS (start)" in lines[2] and "<|startoftext|>" in lines[2]
    assert "red</w>" in table and "EOS (end)" in lines[6]
    assert f"({tokenizer.model_max_length - 5} padding positions)" in table
    assert lines[-1].split()[0] == str(tokenizer.model_max_length - 1)
    # [L] works the same as [1, L]
    assert text.token_table(tokenizer, ids[0]) == table


def test_token_table_shortens_long_prompts_and_rejects_batches(tokenizer):
    ids = text.tokenize(tokenizer, LONG_PROMPT, warn=False)
    table = text.token_table(tokenizer, ids, max_rows=6)
    assert len(table.splitlines()) == 2 + 6                          # header, rule, 6 rows (no padding)
    with pytest.raises(ValueError, match="one prompt"):
        text.token_table(tokenizer, text.tokenize(tokenizer, ["a", "b"]))


# --------------------------------------------------------------------------------------
# The encoder by hand
# --------------------------------------------------------------------------------------


def test_causal_mask_is_zero_on_and_below_the_diagonal():
    mask = text.causal_mask(4)
    assert mask.shape == (1, 1, 4, 4)
    allowed = mask[0, 0] == 0
    assert torch.equal(allowed, torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.all(mask[0, 0][~allowed] == float("-inf"))
    weights = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) + mask[0, 0], dim=-1)
    assert torch.all(weights.triu(1) == 0)                           # the future gets weight 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="length"):
        text.causal_mask(0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_encode_by_hand_equals_last_hidden_state(tokenizer, text_encoder, attn):
    model = copy.deepcopy(text_encoder)
    model.set_attn_implementation(attn)
    ids = text.tokenize(tokenizer, ["a red circle on the left", "", "the green square"])
    with torch.no_grad():
        expected = model(ids).last_hidden_state
        torch.testing.assert_close(text.encode_by_hand(model, ids), expected)


def test_encode_by_hand_from_inputs_embeds_and_fewer_layers(tokenizer, text_encoder):
    ids = text.tokenize(tokenizer, ["a red circle", "a blue square on the right"])
    with torch.no_grad():
        embeds = text_encoder.embeddings.token_embedding(ids)
        torch.testing.assert_close(text.encode_by_hand(text_encoder, inputs_embeds=embeds),
                                   text.encode_by_hand(text_encoder, ids))
        out = text_encoder(ids, output_hidden_states=True)
        n = len(text_encoder.encoder.layers)
        torch.testing.assert_close(text.encode_by_hand(text_encoder, ids, final_layer_norm=False), out.hidden_states[-1])
        torch.testing.assert_close(text.encode_by_hand(text_encoder, ids, layers=0, final_layer_norm=False),
                                   text_encoder.embeddings(input_ids=ids))
        # clip_skip = 1: the last-but-one layer's output, through the final layer norm
        torch.testing.assert_close(text.encode_by_hand(text_encoder, ids, layers=n - 1),
                                   text_encoder.final_layer_norm(out.hidden_states[-2]))


def test_encode_by_hand_accepts_a_full_clip_model(tokenizer, tiny_clip):
    ids = text.tokenize(tokenizer, ["a red circle"])
    with torch.no_grad():
        torch.testing.assert_close(text.encode_by_hand(tiny_clip, ids), tiny_clip.text_model(ids).last_hidden_state)


def test_encode_by_hand_errors(tokenizer, text_encoder):
    ids = text.tokenize(tokenizer, "a red circle")
    with pytest.raises(ValueError, match="exactly one"):
        text.encode_by_hand(text_encoder)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        text.encode_by_hand(text_encoder, ids[0])
    with pytest.raises(ValueError, match="position embeddings"):
        text.encode_by_hand(text_encoder, torch.cat([ids, ids], dim=1))
    with pytest.raises(ValueError, match="layers"):
        text.encode_by_hand(text_encoder, ids, layers=99)
    with pytest.raises(TypeError, match="CLIP text encoder"):
        text.encode_by_hand(torch.nn.Linear(2, 2), ids)


def test_run_encoder_layer_is_the_library_layer(text_encoder):
    layer = text_encoder.encoder.layers[0]
    hidden = torch.randn(2, 5, text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    mask = text.causal_mask(5)
    with torch.no_grad():
        mine = text.run_encoder_layer(layer, hidden, mask)
        library = layer(hidden, attention_mask=mask)
    assert torch.is_tensor(mine) and mine.shape == hidden.shape
    torch.testing.assert_close(mine, library, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Pooling and similarity
# --------------------------------------------------------------------------------------


def test_pooled_output_is_the_first_eos_vector(tokenizer, text_encoder):
    ids = text.tokenize(tokenizer, ["a red circle", "the blue square on the left", ""])
    assert text.first_eos_positions(ids, tokenizer.eos_token_id).tolist() == [4, 7, 1]
    with torch.no_grad():
        out = text_encoder(ids)
    torch.testing.assert_close(text.pooled_output(out.last_hidden_state, ids, tokenizer.eos_token_id),
                               out.pooler_output)
    with pytest.raises(ValueError, match="EOS"):
        text.first_eos_positions(torch.zeros(1, 5, dtype=torch.long), tokenizer.eos_token_id)


def test_cosine_similarity_matches_torch():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)
    sim = text.cosine_similarity(a, b)
    assert sim.shape == (3, 5)
    torch.testing.assert_close(sim, F.cosine_similarity(a[:, None], b[None], dim=-1))
    torch.testing.assert_close(text.cosine_similarity(a, a).diagonal(), torch.ones(3))
    assert text.cosine_similarity(a.half(), b.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="same d"):
        text.cosine_similarity(a, torch.randn(2, 4))


# --------------------------------------------------------------------------------------
# The full CLIP model
# --------------------------------------------------------------------------------------


def test_clip_features_are_unit_vectors_and_match_clip_forward(tokenizer, tiny_clip):
    ids = text.tokenize(tokenizer, ["a red circle", "a blue square"])
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        t = text.clip_text_features(tiny_clip, ids)
        v = text.clip_image_features(tiny_clip, pixels)
        out = tiny_clip(input_ids=ids, pixel_values=pixels)
    assert t.shape == (2, 16) and v.shape == (3, 16)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(t, out.text_embeds)
    torch.testing.assert_close(v, out.image_embeds)
    # logits = exp(logit_scale) * cos(image, text)
    torch.testing.assert_close(tiny_clip.logit_scale.exp() * text.cosine_similarity(v, t), out.logits_per_image)
    with torch.no_grad():
        raw = text.clip_text_features(tiny_clip, ids, normalize=False)
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), t)


def test_clip_folder_and_load_clip(tmp_path, tiny_clip, monkeypatch):
    monkeypatch.delenv("SDLEARN_MODEL", raising=False)
    assert text.clip_folder(tmp_path) is None                        # an SD folder without clip/
    assert text.load_clip(tmp_path) is None
    assert text.clip_folder("org/some-model") is None                # a hub id
    tiny_clip.save_pretrained(tmp_path / "clip")
    assert text.clip_folder(tmp_path) == tmp_path / "clip"
    monkeypatch.setenv("SDLEARN_MODEL", str(tmp_path))
    assert text.clip_folder() == tmp_path / "clip"                   # the model named by $SDLEARN_MODEL
    loaded = text.load_clip(tmp_path)
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    for (name, p), q in zip(tiny_clip.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
