"""Notebook 10's new word: the world's new colour, textual inversion and LoRA (sdlearn.concepts).

Mechanics on tiny random parts where they suffice (frozen rows, save/load equality, adapter
removal), the bundled model for the one behaviour check (a short LoRA run makes it draw orange
where the untrained model does not).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from sdlearn import concepts, evaluate, world

FAST = dict(num_inference_steps=2, guidance_scale=4.0, output_type="np")


# --------------------------------------------------------------------------------------
# The world's new colour
# --------------------------------------------------------------------------------------


def test_orange_is_far_from_the_palette_and_the_background():
    orange = np.array(world.NEW_COLOURS["orange"], dtype=float)
    palette_gap = min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(world.COLOURS.values(), 2))
    nearest = min(np.linalg.norm(orange - np.array(c)) for c in world.COLOURS.values())
    assert nearest >= 0.75 * palette_gap                      # 80 vs the palette's own closest pair, 103
    assert np.linalg.norm(orange - 246) > 3 * 70               # the judge's foreground threshold is 70
    assert "orange" not in world.COLOURS and "orange" not in world.VOCABULARY
    assert world.palette() == world.COLOURS and world.palette(with_new=True) == {**world.COLOURS, **world.NEW_COLOURS}


def test_concept_samples_are_orange_and_judged_orange_only_with_the_six_colours():
    six = world.palette(with_new=True)
    for i in range(12):
        s = world.concept_sample(3, i, word="<orange>")
        assert s.scene.objects[0].colour == "orange" and "<orange>" in s.caption.split()
        assert s.named[0]["colour"] == "orange"
        assert all(world.judge(s.image, s.named, colours=six)[0].values())
        assert world.judge(s.image, s.named)[0]["colour"] is False        # five colours: read as red or yellow
        pixels = s.image[s.masks[0]].astype(float)
        np.testing.assert_allclose(np.median(pixels, axis=0), world.NEW_COLOURS["orange"], atol=1)
    again = world.concept_sample(3, 5, word="<orange>")
    np.testing.assert_array_equal(again.image, world.concept_sample(3, 5, word="<orange>").image)


def test_red_and_yellow_blobs_are_not_read_as_orange():
    six = world.palette(with_new=True)
    for colour in ("red", "yellow"):
        scene = world.Scene((230, 230, 230), (world.Obj(colour, "square", "big", "middle", (0.5, 0.5), 13 / 64),))
        image, _ = world.render(scene)
        assert world.analyse(image, colours=six)[0].colour == colour


def test_the_trained_world_is_unchanged():
    # the default judge still reads the five colours, and the world's own draws are the ones the model saw
    s = world.sample(0, 0)
    assert [d.colour for d in world.analyse(s.image)] == [d.colour for d in world.analyse(s.image, colours=world.COLOURS)]
    assert all("orange" not in c for c in world.all_captions()[:50] + world.all_captions()[-50:])
    assert all(o.colour in world.COLOURS for i in range(200) for o in world.sample(7, i).scene.objects)


def test_concept_captions():
    scene = world.sample_concept_scene(np.random.default_rng(0))
    possible = world.possible_concept_captions(scene, word="<orange>")
    assert len(possible) == 4 and all("<orange>" in c.split() for c in possible)
    rng = np.random.default_rng(1)
    drawn = {world.concept_caption(scene, rng, word="<orange>")[0] for _ in range(100)}
    assert drawn == set(possible)
    text, named = world.concept_caption(scene, word="orange", full=True)
    assert set(named[0]) == set(world.ATTRIBUTES) and text.split()[1:3] == [scene.objects[0].size, "orange"]


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="NEW_COLOURS"):
        world.sample_concept_scene(np.random.default_rng(0), colour="red")
    with pytest.raises(ValueError, match="one word"):
        world.concept_caption(world.sample_concept_scene(np.random.default_rng(0)), word="two words")
    with pytest.raises(TypeError, match="palette"):
        world.analyse(world.sample(0, 0).image, colours=["red"])
    with pytest.raises(ValueError, match="unknown colour"):
        world.render(world.Scene((230, 230, 230), (world.Obj("pink", "square", "big", "middle", (0.5, 0.5), 0.2),)))


def test_held_out_prompts_name_everything_and_differ_from_training():
    prompts = concepts.concept_prompts(20, word="<orange>")
    assert all(set(named[0]) == set(world.ATTRIBUTES) and "<orange>" in text for text, named in prompts)
    assert concepts.CONCEPT_EVAL_SEED >= evaluate.HELD_OUT_SEED
    train_scenes = {world.concept_sample(concepts.CONCEPT_SEED, i, word="x").scene for i in range(20)}
    assert not train_scenes & {world.sample_concept_scene(np.random.default_rng([concepts.CONCEPT_EVAL_SEED, 10]))}


# --------------------------------------------------------------------------------------
# Textual inversion and LoRA on tiny random parts: the mechanics
# --------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, dtype=torch.float32, use_safetensors=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_data(tiny_model_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae")
    return concepts.concept_data(vae, count=8, prior_count=4)


def _images(pipe, prompt):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), height=32, width=32, **FAST).images


def test_draw_batch_mixes_prior_scenes_and_is_seeded(tiny_data):
    latents, captions = concepts.draw_batch(tiny_data, torch.Generator().manual_seed(0), word="<orange>",
                                            batch_size=8, prior_fraction=0.25)
    assert latents.shape == (8, *tiny_data.mean.shape[1:])
    assert sum("<orange>" in c for c in captions) == 6
    again, _ = concepts.draw_batch(tiny_data, torch.Generator().manual_seed(0), word="<orange>", batch_size=8,
                                   prior_fraction=0.25)
    torch.testing.assert_close(latents, again, rtol=0, atol=0)


def test_textual_inversion_learns_one_row_and_reloads_through_diffusers(tiny_pipe, tiny_model_dir, tiny_data,
                                                                          tmp_path):
    before = tiny_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    frozen = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items() if "token_embedding" not in k}
    unet_before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    inversion = concepts.train_textual_inversion(tiny_pipe, tiny_data, init_words=["red", "blue"], steps=3, lr=0.1,
                                                 batch_size=4)
    after = tiny_pipe.text_encoder.get_input_embeddings().weight.detach()
    assert after.shape[0] == before.shape[0] + 1 and inversion.token_id == before.shape[0]
    torch.testing.assert_close(after[:-1], before, rtol=0, atol=0)           # every old row exactly kept
    start = before[[tiny_pipe.tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("red", "blue")]].mean(0)
    assert not torch.equal(after[-1], start)                                 # the new row moved from its start
    assert len(inversion.losses) == 3 and all(np.isfinite(inversion.losses))
    for k, v in tiny_pipe.text_encoder.state_dict().items():
        if k in frozen:
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    for k, v in tiny_pipe.unet.state_dict().items():
        torch.testing.assert_close(v, unet_before[k], rtol=0, atol=0)

    path = concepts.save_textual_inversion(tmp_path, inversion)
    assert path.suffix == ".safetensors"
    from diffusers import StableDiffusionPipeline

    fresh = StableDiffusionPipeline.from_pretrained(tiny_model_dir, dtype=torch.float32, use_safetensors=True,
                                                    safety_checker=None, requires_safety_checker=False)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_textual_inversion(tmp_path, token="<orange>")
    np.testing.assert_array_equal(_images(fresh, "a <orange> circle"), _images(tiny_pipe, "a <orange> circle"))
    with pytest.raises(ValueError, match="already in the tokenizer"):
        concepts.add_token(fresh.tokenizer, fresh.text_encoder, "<orange>")


def test_textual_inversion_refuses_bad_input(tiny_pipe, tiny_data):
    with pytest.raises(ValueError, match="init word"):
        concepts.add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "<x>", init_words=["orange"])
    with pytest.raises(ValueError, match="steps"):
        concepts.train_textual_inversion(tiny_pipe, tiny_data, steps=0)
    with pytest.raises(ValueError, match="lr"):
        concepts.train_lora(tiny_pipe, tiny_data, steps=1, lr=-1.0)


def test_lora_trains_only_the_adapter_saves_reloads_and_comes_off(tiny_pipe, tiny_model_dir, tiny_data, tmp_path):
    base = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    original = _images(tiny_pipe, "a red circle")
    result = concepts.train_lora(tiny_pipe, tiny_data, steps=3, lr=1e-2, batch_size=4, rank=2, alpha=4)
    assert len(result.losses) == 3
    trainable = [n for n, p in tiny_pipe.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.endswith(t + ".lora_A.default.weight") for n in trainable for t in concepts.LORA_TARGETS)
    adapted = _images(tiny_pipe, "a red circle")
    assert not np.array_equal(adapted, original)
    from peft.utils import get_peft_model_state_dict

    assert all(not torch.equal(v, torch.zeros_like(v))
               for k, v in get_peft_model_state_dict(tiny_pipe.unet).items() if "lora_B" in k)

    folder = concepts.save_lora(tmp_path, tiny_pipe.unet)
    assert folder.suffix == ".safetensors" and folder.exists()
    from diffusers import StableDiffusionPipeline

    fresh = StableDiffusionPipeline.from_pretrained(tiny_model_dir, dtype=torch.float32, use_safetensors=True,
                                                    safety_checker=None, requires_safety_checker=False)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path)
    np.testing.assert_allclose(_images(fresh, "a red circle"), adapted, rtol=0, atol=1e-6)

    tiny_pipe.unet.disable_adapters()
    np.testing.assert_array_equal(_images(tiny_pipe, "a red circle"), original)
    tiny_pipe.unet.enable_adapters()
    fresh.unload_lora_weights()
    np.testing.assert_array_equal(_images(fresh, "a red circle"), original)
    base_now = {k.replace(".base_layer", ""): v for k, v in tiny_pipe.unet.state_dict().items() if "lora_" not in k}
    for k, v in base.items():
        torch.testing.assert_close(base_now[k], v, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Behaviour on the bundled model: its VAE has no orange
# --------------------------------------------------------------------------------------


def test_the_bundled_vae_turns_orange_into_a_trained_colour(bundled_pipe):
    # the finding that limits both methods: the VAE, trained on five colours, decodes orange latents as yellow or red
    shares = concepts.round_trip_colours(bundled_pipe.vae, count=16)
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert shares.get("orange", 0.0) <= 0.25
    assert shares.get("yellow", 0.0) + shares.get("red", 0.0) >= 0.75
