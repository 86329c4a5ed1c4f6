"""sdlearn.edit: prompt-to-prompt puts the processors back, changes nothing when told to replace nothing, really
gives the edited prompt the source's maps, agrees between the hand loop and the pipeline, explains bad input,
and on the bundled model keeps the layout better than plain re-generation while drawing the new colour."""

import copy
import dataclasses

import pytest
import torch

from sdlearn import edit
from sdlearn.attention import AttentionStore, capture_attention
from sdlearn.models import build_pipeline

SOURCE, TARGET = "a red circle on the left", "a blue circle on the left"
STEPS = 4
SIDE = 16
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def components(tiny_components):
    """The tiny parts with a private U-Net (the tests change its processors)."""
    return dataclasses.replace(tiny_components, unet=copy.deepcopy(tiny_components.unet), pipeline=None)


@pytest.fixture(scope="module")
def pipe(components):
    c = components
    return build_pipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                          scheduler=copy.deepcopy(c.scheduler))


@pytest.fixture(scope="module")
def x_t(components):
    """One x_T at 16 x 16 (32 px images): the tiny U-Net's attention then runs at 16 x 16."""
    return torch.randn((1, 4, SIDE, SIDE), generator=torch.Generator().manual_seed(0))     # [1, 4, 16, 16]


def _plain(components, prompts, x_t):
    """Plain generation of ``prompts``, all from the same noise."""
    return edit.generate(components, prompts, x_t.repeat(len(prompts), 1, 1, 1), num_inference_steps=STEPS,
                         guidance_scale=GUIDANCE)


def _p2p(model, x_t, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "latents": x_t, "plain": False, **kwargs}
    return edit.prompt_to_prompt(model, kwargs.pop("source", SOURCE), kwargs.pop("target", TARGET), **kwargs)


# --- install and restore ------------------------------------------------------------------------------------


def test_processors_are_restored_and_a_later_generation_is_bit_identical(components, x_t):
    unet = components.unet
    before = dict(unet.attn_processors)
    plain_before = _plain(components, [SOURCE], x_t)
    _p2p(components, x_t, cross_replace_steps=0.5)
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(_plain(components, [SOURCE], x_t), plain_before)


def test_processors_are_restored_after_an_exception(components):
    unet = components.unet
    before = dict(unet.attn_processors)
    with pytest.raises(KeyError, match="boom"):
        with edit.controlled_attention(unet, edit.AttentionReplace(STEPS)):
            assert all(isinstance(p, edit.ReplaceAttnProcessor) for p in unet.attn_processors.values())
            raise KeyError("boom")
    assert all(unet.attn_processors[k] is p for k, p in before.items())


# --- what the edit computes ------------------------------------------------------------------------------------


def test_replacing_no_step_is_plain_generation_from_the_same_noise(components, x_t):
    plain = _plain(components, [SOURCE, TARGET], x_t)                                      # [2, 3, H, W]
    result = _p2p(components, x_t, cross_replace_steps=0.0, self_replace_steps=0.0)
    torch.testing.assert_close(result.source_image, plain[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(result.edited_image, plain[1], atol=1e-6, rtol=0)
    assert (result.edited_image - result.source_image).abs().max() > 1e-2          # the prompts do differ


def test_plain_image_is_the_target_alone_from_the_same_noise(components, x_t):
    result = _p2p(components, x_t, plain=True)
    torch.testing.assert_close(result.plain_image, _plain(components, [TARGET], x_t)[0], atol=0, rtol=0)
    torch.testing.assert_close(result.latents, x_t)


def test_full_replacement_with_an_identical_target_gives_the_source(components, x_t):
    result = _p2p(components, x_t, target=SOURCE, cross_replace_steps=1.0, self_replace_steps=1.0)
    torch.testing.assert_close(result.edited_image, result.source_image, atol=1e-6, rtol=0)


def test_the_edited_prompt_gets_the_source_maps_for_the_first_steps_only(components, x_t):
    store = AttentionStore(keep="conditional", self_max_side=0)
    controller = edit.AttentionReplace(STEPS, cross_replace_steps=0.5, store=store)
    assert controller.cross_steps == 2
    with edit.controlled_attention(components.unet, controller):
        _plain(components, [SOURCE, TARGET], x_t)
    assert store.steps == STEPS and store.batch == 2                                # [cond_source, cond_edit]
    early, late = store.maps(steps=slice(0, 2)), store.maps(steps=slice(2, None))   # [2, L, h, w] each
    torch.testing.assert_close(early[1], early[0], atol=0, rtol=0)
    assert (late[1] - late[0]).abs().max() > 1e-4
    # and they are the source's own maps, as a plain run records them with sdlearn.attention
    with capture_attention(components.unet, keep="conditional", self_max_side=0) as plain:
        _plain(components, [SOURCE, TARGET], x_t)
    torch.testing.assert_close(early[1], plain.maps(steps=slice(0, 2))[0], atol=1e-5, rtol=0)
    assert (plain.maps(steps=slice(0, 2))[1] - early[1]).abs().max() > 1e-4          # not the target's own


def test_batch_rows_with_and_without_guidance():
    controller = edit.AttentionReplace(STEPS, pairs=2)
    assert controller.rows(8) == ([4, 6], [5, 7])                # [u_s1, u_t1, u_s2, u_t2, c_s1, c_t1, c_s2, c_t2]
    assert controller.rows(4) == ([0, 2], [1, 3])                # no guidance: every row is conditional
    both = edit.AttentionReplace(STEPS, replace_unconditional=True)
    assert both.rows(4) == ([0, 2], [1, 3])
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        controller.rows(6)


def test_hand_loop_and_pipeline_give_the_same_edit(components, pipe, x_t):
    by_hand = _p2p(components, x_t, cross_replace_steps=0.75)
    by_pipe = _p2p(pipe, x_t, cross_replace_steps=0.75)
    torch.testing.assert_close(by_pipe.source_image, by_hand.source_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_pipe.edited_image, by_hand.edited_image, atol=1e-5, rtol=0)
    # the pipeline called directly, as a tutorial would, inside the block
    with edit.controlled_attention(pipe.unet, edit.AttentionReplace(STEPS, cross_replace_steps=0.75)):
        images = pipe([SOURCE, TARGET], latents=x_t.repeat(2, 1, 1, 1), num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, output_type="pt").images                 # [2, 3, H, W] in [0, 1]
    torch.testing.assert_close(images[1] * 2 - 1, by_hand.edited_image, atol=1e-5, rtol=0)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_inputs_are_explained(components, x_t):
    with pytest.raises(ValueError, match=r"'a red circle' is 3 tokens .*'a purple circle' is 8 tokens"):
        edit.prompt_to_prompt(components, "a red circle", "a purple circle", latents=x_t)
    for bad in (1.5, -0.1, True, float("nan"), "0.8"):
        with pytest.raises(ValueError, match=r"cross_replace_steps must be a number in \[0, 1\]"):
            edit.prompt_to_prompt(components, SOURCE, TARGET, cross_replace_steps=bad, latents=x_t)
    with pytest.raises(ValueError, match=r"self_replace_steps must be a number in \[0, 1\]"):
        edit.AttentionReplace(STEPS, self_replace_steps=2)
    with pytest.raises(TypeError, match="target must be a str"):
        edit.prompt_to_prompt(components, SOURCE, ["a blue circle"], latents=x_t)
    with pytest.raises(ValueError, match="source is empty"):
        edit.prompt_to_prompt(components, " ", TARGET, latents=x_t)
    with pytest.raises(ValueError, match=r"latents must be one x_T"):
        edit.prompt_to_prompt(components, SOURCE, TARGET, latents=x_t.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="guidance_scale must be a number > 1"):
        edit.prompt_to_prompt(components, SOURCE, TARGET, latents=x_t, guidance_scale=1.0)
    with pytest.raises(TypeError, match="SDComponents"):
        edit.prompt_to_prompt(components.unet, SOURCE, TARGET)


def test_misuse_of_the_block_is_explained(components, x_t):
    unet = components.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="ran 4 times .* set up for 8 steps"):
        with edit.controlled_attention(unet, edit.AttentionReplace(2 * STEPS)):
            _plain(components, [SOURCE, TARGET], x_t)
    with pytest.raises(RuntimeError, match="more than the 2 steps"):
        with edit.controlled_attention(unet, edit.AttentionReplace(2)):
            _plain(components, [SOURCE, TARGET], x_t)
    with pytest.raises(ValueError, match="does not compute plain softmax attention"):
        with capture_attention(unet):
            with edit.controlled_attention(unet, edit.AttentionReplace(STEPS)):
                pass
    with pytest.raises(TypeError, match="AttentionReplace"):
        with edit.controlled_attention(unet, object()):
            pass
    assert all(unet.attn_processors[k] is p for k, p in before.items())


def test_word_swaps_change_one_word_and_leave_the_position_free():
    swaps = edit.word_swaps(12, attribute="colour")
    assert len(swaps) == 12
    for s in swaps:
        old, new = s["source"].split(), s["target"].split()
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert len(old) == len(new) and changed == [(s["named"][0]["colour"], s["new"])]
        assert "position" not in s["named"][0]
    assert all("position" in s["named"][0] for s in edit.word_swaps(4, attribute="shape", kind="full"))
    with pytest.raises(ValueError, match="attribute must be one of"):
        edit.word_swaps(4, attribute="size")


# --- behaviour on the bundled model -------------------------------------------------------------------------------


def test_p2p_keeps_the_layout_better_than_plain_regeneration_on_the_bundled_model(bundled_pipe):
    figures = edit.measure_word_swap(bundled_pipe, count=8)
    assert figures["guidance_scale"] == 4.0 and figures["source_right"] >= 0.75
    assert figures["p2p"]["new"] >= 0.75                                 # the new colour is drawn
    assert figures["p2p"]["iou"] > figures["plain"]["iou"] + 0.05         # and the layout kept better (measured +0.10)


def test_self_attention_is_replaced_for_its_share_of_the_steps(components, x_t):
    point = (0.3, 0.6)
    for share, equal in ((1.0, True), (0.0, False)):
        store = AttentionStore(keep="conditional", self_max_side=SIDE)
        controller = edit.AttentionReplace(STEPS, cross_replace_steps=0.0, self_replace_steps=share, store=store)
        with edit.controlled_attention(components.unet, controller):
            _plain(components, [SOURCE, TARGET], x_t)
        rows = store.self_attention(point)                                          # [2, h, w]
        assert torch.equal(rows[1], rows[0]) is equal
