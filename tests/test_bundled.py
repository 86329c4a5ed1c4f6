"""The bundled teaching model: it ships, loads offline with plain diffusers, and has not changed."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sdlearn import models, world
from sdlearn.recipe import Recipe, text_encoder_from_clip

FOLDER = models.BUNDLED_MODEL_DIR


def test_standard_diffusers_layout_under_40_mb():
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        assert (FOLDER / part).is_dir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (FOLDER / "tokenizer" / name).is_file()  # readable by any transformers release
    files = [f for f in FOLDER.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 40e6
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}], "safetensors only"
    assert (FOLDER / "README.md").is_file() and (FOLDER / "evaluation.json").is_file()


def test_weights_are_fp16_safetensors():
    for part in ("text_encoder", "vae", "unet", "clip"):
        for f in (FOLDER / part).glob("*.safetensors"):
            with safe_open(f, "pt") as st:
                dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
            assert dtypes == {"F16"}, (f, dtypes)


def test_sd_architecture_facts(bundled_pipe):
    assert bundled_pipe.vae.config.latent_channels == 4
    assert 2 ** (len(bundled_pipe.vae.config.block_out_channels) - 1) == 8
    assert bundled_pipe.unet.config.cross_attention_dim == bundled_pipe.text_encoder.config.hidden_size
    assert bundled_pipe.unet.config.sample_size * 8 >= 64
    text_positions = bundled_pipe.text_encoder.config.max_position_embeddings
    assert bundled_pipe.tokenizer.model_max_length == text_positions == 77
    assert bundled_pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert bundled_pipe.scheduler.config.prediction_type == "epsilon"
    # SD's constant, folded into the VAE (the measured factor is in recipe.json)
    assert bundled_pipe.vae.config.scaling_factor == 0.18215


def test_scaling_factor_gives_unit_variance_latents_and_raw_latents_sds_spread(bundled_pipe):
    data = np.stack([world.sample(1000, i).image for i in range(64)])
    x = torch.from_numpy(data).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        raw = bundled_pipe.vae.encode(x).latent_dist.mean
    latents = raw * bundled_pipe.vae.config.scaling_factor
    assert 0.85 < float(latents.std()) < 1.15
    assert 4.5 < float(raw.std()) < 6.5                   # SD 1.x's raw latents: std about 5.5
    measured = json.loads((FOLDER / "recipe.json").read_text())["measured_scaling_factor"]
    k = measured / 0.18215                                # the fold multiplied the encoder's latents by k
    unfolded = raw / k                                    # the latents before the fold
    assert 1 / float(unfolded.std()) == pytest.approx(measured, rel=0.1)   # what the fold started from


def test_every_config_difference_from_sd15_has_its_reason_in_the_card():
    from sdlearn import model_card

    found = {(part, key) for part, key, _, _ in model_card.config_differences(FOLDER)}
    assert found == set(model_card.DIFFERENCE_REASONS), "a difference without a reason, or a reason for none"
    # SD 1.5's scheduler config, key for key, but for the class (DDIM for PNDM) and PNDM's own setting
    assert {key for part, key in found if part == "scheduler"} == {"_class_name", "skip_prk_steps"}
    card = (FOLDER / "README.md").read_text()
    for reason in model_card.DIFFERENCE_REASONS.values():
        assert reason in card


def test_text_encoder_is_the_clip_text_tower(bundled_pipe):
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(FOLDER / "clip", dtype=torch.float32)
    ids = bundled_pipe.tokenizer(["a red circle on the left"], padding="max_length", max_length=77,
                                 return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(text_encoder_from_clip(clip)(ids).last_hidden_state,
                                   bundled_pipe.text_encoder(ids).last_hidden_state)


def test_loader_default_is_the_bundled_model(monkeypatch):
    monkeypatch.delenv("SDLEARN_MODEL", raising=False)
    comp = models.load(device="cpu")
    assert comp.name == "bundled" and comp.image_size == Recipe().resolution


# A coarse 8x8 grid (every 8th pixel, mean of R, G, B) of a seeded sample: an accidental
# change to the weights, the loader or the sampling code shows up here. Measured once with
# the model as shipped (sdlearn 0.1.0, diffusers 0.42.1, torch 2.13 CPU); the tolerance
# covers float differences between CPUs (values are pixels in [0, 1]; the grid crosses
# the circle's edge, where a changed model would move values by 0.1 or more).
EXPECTED_GRID = [
    [0.900, 0.950, 0.946, 0.947, 0.949, 0.953, 0.956, 0.946],
    [0.945, 0.938, 0.938, 0.943, 0.943, 0.947, 0.945, 0.947],
    [0.952, 0.746, 0.348, 0.936, 0.948, 0.946, 0.945, 0.946],
    [0.810, 0.381, 0.385, 0.404, 0.950, 0.947, 0.946, 0.945],
    [0.726, 0.378, 0.378, 0.363, 0.940, 0.947, 0.945, 0.947],
    [0.962, 0.380, 0.369, 0.943, 0.947, 0.945, 0.945, 0.947],
    [0.953, 0.939, 0.946, 0.945, 0.944, 0.944, 0.944, 0.946],
    [0.941, 0.939, 0.943, 0.940, 0.945, 0.943, 0.943, 0.945],
]


def test_seeded_sample_has_not_changed(bundled_pipe):
    image = bundled_pipe("a big red circle on the left", num_inference_steps=20, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    np.testing.assert_allclose(image[::8, ::8].mean(-1), np.array(EXPECTED_GRID), atol=2e-2)
    detections = world.analyse((image * 255).round().astype(np.uint8))
    assert detections and (detections[0].colour, detections[0].shape, detections[0].position) == ("red", "circle", "left")


# The evaluation command's cheap measurements, re-run here: the model card's numbers are
# what the shipped weights give, not figures from some earlier build.
@pytest.fixture(scope="module")
def card_evaluation():
    return json.loads((FOLDER / "evaluation.json").read_text())


def test_vae_psnr_reproduces_the_model_card(bundled_pipe, card_evaluation):
    from sdlearn.evaluate import vae_psnr

    assert vae_psnr(bundled_pipe.vae) == pytest.approx(card_evaluation["vae_psnr_db"], abs=0.05)
    assert card_evaluation["vae_psnr_db"] >= 28


def test_clip_zero_shot_reproduces_the_model_card(bundled_pipe, card_evaluation):
    from transformers import CLIPModel

    from sdlearn.evaluate import clip_zero_shot

    clip = CLIPModel.from_pretrained(FOLDER / "clip", dtype=torch.float32).eval()
    measured = clip_zero_shot(clip, bundled_pipe.tokenizer)
    for attribute, accuracy in card_evaluation["clip_zero_shot"].items():
        assert measured[attribute] == pytest.approx(accuracy, abs=0.005), attribute
        assert accuracy >= 0.95, attribute
