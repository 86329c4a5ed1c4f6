"""Loss and CLIP guidance (sdlearn.guidance) and weighted prompts (sdlearn.text.encode_weighted)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from sdlearn import guidance, sampling, text


def _noise(c, batch: int, seed: int = 0) -> torch.Tensor:
    side = c.image_size // c.vae_scale_factor
    return torch.randn(batch, 4, side, side, generator=torch.Generator().manual_seed(seed))


def test_no_loss_is_the_plain_loop(tiny_components):
    c = tiny_components
    noise = _noise(c, 2)
    plain = sampling.text_to_image(c, ["a red circle", "a blue square"], num_inference_steps=4, guidance_scale=3.0,
                                   latents=noise)
    steered = guidance.loss_guided(c, ["a red circle", "a blue square"], guidance.blue_loss, loss_scale=0.0,
                                   num_inference_steps=4, guidance_scale=3.0, latents=noise)
    torch.testing.assert_close(steered.latents, plain.latents, rtol=0, atol=1e-6)
    assert steered.losses == []


def test_the_loss_term_is_the_formula(tiny_components):
    """One DDIM step by hand: eps_hat = eps_cfg + s sqrt(1 - abar_t) grad_{x_t} L(D(x0_hat)), then DDIM."""
    c = tiny_components
    noise, scale, s = _noise(c, 1, seed=1), 30.0, 3.0
    result = guidance.loss_guided(c, "a red circle", guidance.top_brightness_loss, loss_scale=scale,
                                  num_inference_steps=1, guidance_scale=s, latents=noise)
    scheduler = copy.deepcopy(c.scheduler)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    text_emb, empty = sampling.encode_prompt(c.tokenizer, c.text_encoder, ["a red circle"])
    with torch.no_grad():
        eps_uncond, eps_text = c.unet(torch.cat([noise] * 2), t, encoder_hidden_states=torch.cat([empty, text_emb])
                                      ).sample.chunk(2)
    eps = eps_uncond + s * (eps_text - eps_uncond)
    abar = scheduler.alphas_cumprod[int(t)]
    x = noise.clone().requires_grad_(True)
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    picture = c.vae.decode(x0 / c.vae.config.scaling_factor).sample.clamp(-1, 1)
    loss = -((picture[:, :, : picture.shape[2] // 2] + 1) / 2).mean()
    (grad,) = torch.autograd.grad(loss, x)
    eps_hat = eps + scale * (1 - abar).sqrt() * grad
    expected = scheduler.step(eps_hat, t, noise).prev_sample
    torch.testing.assert_close(result.latents, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.losses[0], loss.detach().reshape(1), rtol=1e-5, atol=1e-6)
    assert grad.abs().sum() > 0


def test_each_pictures_gradient_is_its_own(tiny_components):
    c = tiny_components
    latents, eps = _noise(c, 2, seed=2), _noise(c, 2, seed=3)
    abar = torch.tensor(0.5)
    both, _ = guidance.loss_gradient(c.vae, latents, eps, abar, guidance.blue_loss)
    one, _ = guidance.loss_gradient(c.vae, latents[1:], eps[1:], abar, guidance.blue_loss)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-7)


def test_losses_and_clip_score():
    blue = torch.full((1, 3, 8, 8), -1.0)
    blue[:, 2] = 0.8                                                   # blue channel 0.9 in [0, 1]
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0
    assert guidance.blue_loss(blue).item() == pytest.approx(0.0, abs=1e-6)
    assert guidance.blue_loss(red).item() == pytest.approx(0.9, abs=1e-6)
    top = torch.cat([torch.ones(1, 3, 4, 8), -torch.ones(1, 3, 4, 8)], dim=2)
    assert guidance.top_brightness_loss(top).item() == pytest.approx(-1.0)
    assert guidance.top_brightness_loss(top.flip(2)).item() == pytest.approx(0.0)


def test_clip_score_reads_the_colour(bundled_pipe):
    from sdlearn import world
    from sdlearn.images import to_model_range

    clip = text.load_clip()
    scene = world.Scene((235, 235, 235), (world.Obj("blue", "circle", "big", "middle", (0.5, 0.5), 13 / 64),))
    image, _ = world.render(scene)
    pixels = to_model_range(torch.from_numpy(image).permute(2, 0, 1)[None])
    scores = guidance.clip_score(clip, bundled_pipe.tokenizer, pixels.repeat(2, 1, 1, 1),
                                 ["a big blue circle in the middle", "a big red circle in the middle"])
    assert scores[0] > scores[1]
    features_i = text.clip_image_features(clip, pixels)
    features_t = text.clip_text_features(clip, text.tokenize(bundled_pipe.tokenizer, ["a big blue circle in the middle"]))
    torch.testing.assert_close(scores[:1], (features_i * features_t).sum(-1), rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused(tiny_components):
    c = tiny_components
    with pytest.raises(ValueError, match="loss_scale must be"):
        guidance.loss_guided(c, "a red circle", guidance.blue_loss, loss_scale=-1.0, num_inference_steps=2)
    with pytest.raises(TypeError, match="loss_fn must be"):
        guidance.loss_guided(c, "a red circle", None, loss_scale=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="sigma-space"):
        guidance.loss_guided(c, "a red circle", guidance.blue_loss, loss_scale=1.0, num_inference_steps=2,
                             scheduler=EulerDiscreteScheduler.from_config(c.scheduler.config))
    with pytest.raises(ValueError, match="one number per picture"):
        guidance.loss_guided(c, "a red circle", lambda images: images.mean(), loss_scale=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="every"):
        guidance.loss_guided(c, "a red circle", guidance.blue_loss, loss_scale=1.0, every=0)
    with pytest.raises(ValueError, match="non-empty text"):
        guidance.clip_loss(torch.nn.Linear(1, 1), c.tokenizer, "  ")
    guidance.loss_guided(c, "a red circle", guidance.blue_loss, loss_scale=1.0, num_inference_steps=2,
                         scheduler=DDIMScheduler.from_config(c.scheduler.config))


def test_loss_guidance_lowers_the_loss_and_keeps_the_object():
    from sdlearn import models

    c = models.load()
    figures = guidance.measure_loss_guidance(c, guidance.blue_loss, loss_scale=50.0, count=6)
    assert figures["loss_guided"] < figures["loss_plain"]
    assert figures["loss_fell"] >= 4 / 6
    assert figures["object_guided"] >= 4 / 6


# ---- weighted prompts ---------------------------------------------------------------------------------------


def test_parse_weighted_prompt():
    assert text.parse_weighted_prompt("a (red:1.5) circle") == ("a red circle", [("a", 1.0), ("red", 1.5),
                                                                               ("circle", 1.0)])
    assert text.parse_weighted_prompt("(a big:0.5) square ( on the left : 2 )") == (
        "a big square on the left",
        [("a", 0.5), ("big", 0.5), ("square", 1.0), ("on", 2.0), ("the", 2.0), ("left", 2.0)])
    assert text.parse_weighted_prompt("a red circle")[1] == [("a", 1.0), ("red", 1.0), ("circle", 1.0)]
    for bad in ("a (red circle", "a (red:x) circle", "a (red:1.2 circle"):
        with pytest.raises(ValueError, match=r"\(word:1.3\)"):
            text.parse_weighted_prompt(bad)
    with pytest.raises(TypeError):
        text.parse_weighted_prompt(["a red circle"])


def test_encode_weighted_scales_the_words_tokens(tiny_components):
    c = tiny_components
    plain = text.encode(c.tokenizer, c.text_encoder, ["a red circle"])
    torch.testing.assert_close(text.encode_weighted(c.tokenizer, c.text_encoder, "a red circle"), plain)
    raw = text.encode_weighted(c.tokenizer, c.text_encoder, "a (red:1.5) circle", keep_mean=False)
    ratio = raw / plain                                                       # [1, L, d]
    torch.testing.assert_close(ratio[0, 2], torch.full_like(ratio[0, 2], 1.5))   # "red" is token 2 (after BOS, "a")
    others = torch.cat([ratio[0, :2], ratio[0, 3:]])
    torch.testing.assert_close(others, torch.ones_like(others))
    kept = text.encode_weighted(c.tokenizer, c.text_encoder, "a (red:1.5) circle")
    torch.testing.assert_close(kept.mean(), plain.mean())
    torch.testing.assert_close(kept, raw * plain.mean() / raw.mean())


def test_a_negative_prompt_steers_away_from_its_colour():
    from sdlearn import models

    figures = guidance.measure_negative_prompt(models.load(), colour="red", count=32)
    assert figures["colour_plain"] >= 4 / 32                     # about a fifth of uncoloured prompts come out red
    assert figures["colour_negative"] <= figures["colour_plain"] / 2
    assert figures["object_negative"] >= 26 / 32
