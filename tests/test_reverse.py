"""The reverse process (notebook 06, section 5): DDPM's posterior and ancestral step, DDIM as its family.

``sampling.posterior_mean_coefficients``, ``sampling.posterior_variance`` and ``sampling.ddpm_step``
against Ho et al. (2020) and diffusers' ``DDPMScheduler``; and what the notebook shows with
diffusers' own schedulers and pipeline, kept true here on random tensors and the tiny parts:
DDIM at eta = 1 is the DDPM step, deterministic DDIM is Euler's method in (sigma, x / sqrt(abar)),
``DDIMInverseScheduler`` is the hand-written inversion, and guidance rescale is Lin et al.'s formula.
"""

import pytest
import torch
from diffusers import (DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from sdlearn import sampling

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SD_CONFIG = dict(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1)   # SD 1.5's scheduler config
PROMPT = "a red circle on the left"
SIZE = 32          # the tiny VAE halves once: 32x32 images, 16x16 latents


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def alphas():
    return DDPMScheduler(**SD).alphas_cumprod


def schedule(scheduler, steps):
    """``scheduler.set_timesteps(steps)``; returns ``[(t, t_prev), ...]``, the last ``t_prev`` -1."""
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps.tolist()
    return list(zip(ts, ts[1:] + [-1]))


def fake_eps(x, t):
    """A smooth stand-in for the U-Net's noise prediction: depends on the latent and the timestep."""
    return 0.8 * torch.tanh(x) + 0.001 * float(t) * x.mean(dim=(1, 2, 3), keepdim=True)


# --- the posterior q(x_prev | x_t, x_0) ----------------------------------------------------------


@pytest.mark.parametrize("t, t_prev", [(1, 0), (500, 499), (999, 998), (451, 401), (951, 901)])
def test_posterior_is_bayes_rule_for_the_two_gaussians(t, t_prev):
    # q(x_prev | x_0) = N(sqrt(a_prev) x_0, 1 - a_prev) and q(x_t | x_prev) = N(sqrt(alpha) x_prev, beta): their
    # product, as a Gaussian in x_prev, has precision 1 / (1 - a_prev) + alpha / beta and that precision times
    # the mean is sqrt(a_prev) x_0 / (1 - a_prev) + sqrt(alpha) x_t / beta. DDPM's eq. 7 must be that Gaussian.
    a = alphas().double()
    a_t, a_prev = a[t], a[t_prev]
    alpha = a_t / a_prev
    beta = 1 - alpha
    variance = 1 / (1 / (1 - a_prev) + alpha / beta)
    c0, ct = sampling.posterior_mean_coefficients(a_t, a_prev)
    torch.testing.assert_close(sampling.posterior_variance(a_t, a_prev), variance)
    torch.testing.assert_close(c0, variance * a_prev.sqrt() / (1 - a_prev))
    torch.testing.assert_close(ct, variance * alpha.sqrt() / beta)


def test_posterior_of_one_training_step_uses_the_schedules_beta():
    # Between t - 1 and t the jump's beta, 1 - a_t / a_(t-1), is the schedule's beta_t; in float32 only up to the
    # rounding of the cumulative product, relative 1e-4 for SD's smallest beta (8.5e-4 against a float32 epsilon).
    scheduler = DDPMScheduler(**SD)
    a, betas = scheduler.alphas_cumprod, scheduler.betas
    tol = dict(rtol=2e-4, atol=0)
    for t in (1, 10, 300, 999):
        c0, ct = sampling.posterior_mean_coefficients(a[t], a[t - 1])
        torch.testing.assert_close(c0, betas[t] * a[t - 1].sqrt() / (1 - a[t]), **tol)           # Ho et al. eq. 7
        torch.testing.assert_close(ct, (1 - betas[t]).sqrt() * (1 - a[t - 1]) / (1 - a[t]), **tol)
        torch.testing.assert_close(sampling.posterior_variance(a[t], a[t - 1]), (1 - a[t - 1]) / (1 - a[t]) * betas[t],
                                   **tol)
        torch.testing.assert_close(sampling.posterior_variance(a[t], a[t - 1], variance_type="fixed_large"), betas[t],
                                   **tol)


def test_posterior_mean_written_with_the_noise_is_algorithm_2s():
    a = alphas()
    g = gen(1)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    for t, t_prev in ((951, 901), (451, 401), (51, 1)):
        a_t, a_prev = a[t], a[t_prev]
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        c0, ct = sampling.posterior_mean_coefficients(a_t, a_prev)
        torch.testing.assert_close(c0 * x0 + ct * x_t, (x_t - beta / (1 - a_t).sqrt() * eps) / alpha.sqrt(),
                                   rtol=1e-5, atol=1e-5)


def test_posterior_variance_at_the_last_step_and_bad_types():
    a = alphas()
    last = sampling.posterior_variance(a[1], torch.tensor(1.0))          # to x_0 itself: no variance left
    assert 0 < last < 1e-19                                               # kept at 1e-20, as diffusers keeps it
    assert sampling.posterior_variance(a[1], torch.tensor(1.0), variance_type="fixed_large") == pytest.approx(
        float(1 - a[1]))
    with pytest.raises(ValueError, match=r"variance_type must be one of \('fixed_small', 'fixed_large'\)"):
        sampling.posterior_variance(a[10], a[9], variance_type="learned")


# --- DDPM's step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing, steps, offset", [("leading", 10, 1), ("trailing", 7, 1), ("leading", 1000, 0)])
def test_ddpm_step_equals_ddpm_scheduler_step_bit_for_bit(variance_type, spacing, steps, offset):
    scheduler = DDPMScheduler.from_config(SD_CONFIG, variance_type=variance_type, timestep_spacing=spacing,
                                          steps_offset=offset)
    pairs = schedule(scheduler, steps)
    if steps == 1000:                       # the whole chain, 999 ... 0: its first steps and its end, t = 0 included
        pairs = pairs[:3] + pairs[-3:]
    g_lib, g_hand = gen(4), gen(4)
    x = torch.randn(2, 4, 8, 8, generator=gen(3))
    for t, t_prev in pairs:
        eps = fake_eps(x, t)
        library = scheduler.step(eps, t, x, generator=g_lib)
        by_hand = sampling.ddpm_step(eps, t, x, alphas_cumprod=scheduler.alphas_cumprod, prev_timestep=t_prev,
                                     variance_type=variance_type, generator=g_hand)
        assert torch.equal(by_hand.prev_sample, library.prev_sample), t
        assert torch.equal(by_hand.pred_original_sample, library.pred_original_sample), t
        assert torch.equal(g_hand.get_state(), g_lib.get_state())       # the same draws, in the same order
        x = library.prev_sample


def test_ddpm_step_is_the_posterior_around_x0_hat():
    a = alphas()
    g = gen(2)
    x, eps, z = (torch.randn(1, 4, 4, 4, generator=g) for _ in range(3))
    out = sampling.ddpm_step(eps, 451, x, alphas_cumprod=a, prev_timestep=401, variance_noise=z)
    x0_hat = (x - (1 - a[451]).sqrt() * eps) / a[451].sqrt()
    c0, ct = sampling.posterior_mean_coefficients(a[451], a[401])
    torch.testing.assert_close(out.pred_original_sample, x0_hat)
    torch.testing.assert_close(out.prev_sample, c0 * x0_hat + ct * x + sampling.posterior_variance(a[451], a[401]).sqrt() * z)


def test_ddpm_step_draws_one_z_for_every_step_but_the_one_from_t_0():
    a = alphas()
    x = torch.randn(1, 4, 4, 4, generator=gen(5))
    eps = fake_eps(x, 1)
    g = gen(6)
    before = g.get_state()
    last = sampling.ddpm_step(eps, 1, x, alphas_cumprod=a, prev_timestep=-1, generator=g)   # SD's last step
    assert not torch.equal(g.get_state(), before)                                          # a z was drawn ...
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample, rtol=0, atol=1e-9)   # ... worth 1e-10
    before = g.get_state()
    at_zero = sampling.ddpm_step(eps, 0, x, alphas_cumprod=a, prev_timestep=-1, generator=g)
    assert torch.equal(g.get_state(), before)                                              # none from t = 0
    assert torch.equal(at_zero.prev_sample, at_zero.pred_original_sample)


def test_bad_ddpm_step_input_is_explained():
    a = alphas()
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="same shape"):
        sampling.ddpm_step(torch.zeros(1, 4, 3, 3), 500, x, alphas_cumprod=a, prev_timestep=400)
    with pytest.raises(ValueError, match=r"prev_timestep 600 below it \(-1 for the last step\)"):
        sampling.ddpm_step(x, 500, x, alphas_cumprod=a, prev_timestep=600)
    with pytest.raises(ValueError, match=r"timestep 1000 must be in \[0, 999\]"):
        sampling.ddpm_step(x, 1000, x, alphas_cumprod=a, prev_timestep=900)
    with pytest.raises(ValueError, match="not both"):
        sampling.ddpm_step(x, 500, x, alphas_cumprod=a, prev_timestep=400, generator=gen(), variance_noise=x)
    with pytest.raises(ValueError, match=r"variance_noise has shape \(1, 4, 3, 3\)"):
        sampling.ddpm_step(x, 500, x, alphas_cumprod=a, prev_timestep=400, variance_noise=torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match="variance_type must be one of"):
        sampling.ddpm_step(x, 500, x, alphas_cumprod=a, prev_timestep=400, variance_type="learned_range")
    with pytest.raises(ValueError, match="1-D tensor"):
        sampling.ddpm_step(x, 500, x, alphas_cumprod=a[None], prev_timestep=400)


# --- DDIM, the family: eta = 1 is DDPM, eta = 0 is Euler on the probability-flow ODE -------------


def test_ddim_at_eta_1_is_the_ddpm_step_but_for_where_they_end():
    ddim = DDIMScheduler(**SD_CONFIG)
    g = gen(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t, t_prev in schedule(ddim, 10):
        eps, z = fake_eps(x, t), torch.randn(x.shape, generator=g)
        a_t = ddim.alphas_cumprod[t]
        ddpm = sampling.ddpm_step(eps, t, x, alphas_cumprod=ddim.alphas_cumprod, prev_timestep=t_prev, variance_noise=z)
        ends = [sampling.ddim_step(eps, t, x, alphas_cumprod=ddim.alphas_cumprod, prev_timestep=t_prev,
                                   final_alpha_cumprod=end, eta=1.0, variance_noise=z).prev_sample
                for end in (ddim.final_alpha_cumprod, 1.0)]
        if t_prev >= 0:
            a_prev = ddim.alphas_cumprod[t_prev]
            sigma2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)                 # DDIM eq. 16 at eta = 1, squared
            torch.testing.assert_close(sigma2, sampling.posterior_variance(a_t, a_prev))
            torch.testing.assert_close(ends[0], ddpm.prev_sample, rtol=1e-5, atol=1e-5)
        else:       # DDIM ends at abar_0 (set_alpha_to_one=False), DDPM at 1; DDIM ended at 1 is DDPM's step
            assert ddim.final_alpha_cumprod == ddim.alphas_cumprod[0]
            assert (ends[0] - ddpm.prev_sample).abs().max() > 1e-3
            torch.testing.assert_close(ends[1], ddpm.prev_sample, rtol=1e-5, atol=1e-5)
        x = ddpm.prev_sample


def test_deterministic_ddim_is_euler_in_sigma_and_x_over_sqrt_abar():
    ddim = DDIMScheduler(**SD_CONFIG)
    ddim.set_timesteps(12)
    x_T = torch.randn(1, 4, 8, 8, generator=gen(8))
    x = x_T
    for t in ddim.timesteps:
        x = ddim.step(fake_eps(x, t), t, x).prev_sample
    abars = [ddim.alphas_cumprod[int(t)] for t in ddim.timesteps] + [ddim.final_alpha_cumprod]
    sigmas = [((1 - a) / a).sqrt() for a in abars]
    x_bar = x_T / abars[0].sqrt()
    for i, t in enumerate(ddim.timesteps):
        eps = fake_eps(x_bar * abars[i].sqrt(), t)
        x_bar = x_bar + (sigmas[i + 1] - sigmas[i]) * eps                       # Euler: d x_bar = eps d sigma
    torch.testing.assert_close(x_bar * abars[-1].sqrt(), x, rtol=0, atol=1e-5)
    # EulerDiscreteScheduler on the same timesteps goes on to sigma = 0: the last step's x0_hat
    euler = EulerDiscreteScheduler.from_config(ddim.config, timestep_spacing="leading")
    euler.set_timesteps(12)
    assert euler.timesteps.tolist() == ddim.timesteps.tolist() and float(euler.sigmas[-1]) == 0.0
    sample = x_T * euler.init_noise_sigma
    for t in euler.timesteps:
        sample = euler.step(fake_eps(euler.scale_model_input(sample, t), t), t, sample).prev_sample
    torch.testing.assert_close(sample, x_bar - sigmas[-1] * eps, rtol=0, atol=1e-5)


def test_ddim_inverse_scheduler_is_the_hand_written_inversion():
    config = DDIMScheduler(**SD_CONFIG).config
    inverse = DDIMInverseScheduler.from_config(config)
    inverse.set_timesteps(10)
    ddim = DDIMScheduler.from_config(config)
    ddim.set_timesteps(10)
    assert inverse.timesteps.tolist() == ddim.timesteps.flip(0).tolist()
    x0 = torch.randn(1, 4, 8, 8, generator=gen(9))
    library, by_hand, a_prev = x0, x0, ddim.final_alpha_cumprod
    for t in inverse.timesteps:
        library = inverse.step(fake_eps(library, t), t, library).prev_sample
        a_t = ddim.alphas_cumprod[int(t)]
        eps = fake_eps(by_hand, t)                                     # at the known point, told the next t
        x0_hat = (by_hand - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        by_hand, a_prev = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps, a_t
    torch.testing.assert_close(by_hand, library, rtol=1e-5, atol=1e-5)


# --- guidance rescale ------------------------------------------------------------------------------


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_rescale_noise_cfg_is_lin_et_als_formula(phi):
    g = gen(10)
    uncond, text = torch.randn(3, 4, 8, 8, generator=g), 1.5 * torch.randn(3, 4, 8, 8, generator=g)
    noise_cfg = uncond + 15.0 * (text - uncond)
    std_text, std_cfg = text.std(dim=(1, 2, 3), keepdim=True), noise_cfg.std(dim=(1, 2, 3), keepdim=True)
    by_hand = phi * noise_cfg * (std_text / std_cfg) + (1 - phi) * noise_cfg
    library = rescale_noise_cfg(noise_cfg, text, guidance_rescale=phi)
    torch.testing.assert_close(library, by_hand)
    torch.testing.assert_close(library.std(dim=(1, 2, 3), keepdim=True), phi * std_text + (1 - phi) * std_cfg)


# --- the whole runs, on the tiny parts, against StableDiffusionPipeline ----------------------------


def make_pipeline(comp, scheduler):
    pipe = StableDiffusionPipeline(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer,
                                   unet=comp.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_latents(pipe, **kwargs):
    final = {}

    def keep(pipeline, i, t, callback_kwargs):
        final["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    pipe(PROMPT, height=SIZE, width=SIZE, output_type="latent", callback_on_step_end=keep, **kwargs)
    return final["latents"]


def hand_loop(comp, latents, pairs, step, *, guidance_scale):
    """The notebook's loop: one U-Net call on [x_t; x_t], guidance, then ``step(noise_pred, noise_pred_text, t, t_prev, x)``."""
    prompt_embeds, negative_prompt_embeds = sampling.encode_prompt(comp.tokenizer, comp.text_encoder, PROMPT)
    hidden = torch.cat([negative_prompt_embeds, prompt_embeds])
    with torch.no_grad():
        for t, t_prev in pairs:
            noise_pred_uncond, noise_pred_text = comp.unet(torch.cat([latents] * 2), t,
                                                           encoder_hidden_states=hidden).sample.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = step(noise_pred, noise_pred_text, t, t_prev, latents)
    return latents


def test_ddpm_by_hand_equals_the_pipeline_with_ddpm_scheduler(tiny_components):
    ddpm = DDPMScheduler.from_config(tiny_components.scheduler.config)
    pairs = schedule(ddpm, 3)
    g = gen(11)
    shape = (1, 4, SIZE // 2, SIZE // 2)
    x_T = torch.randn(shape, generator=g)                                   # x_T first, then one z per step

    def step(noise_pred, _, t, t_prev, x):
        z = torch.randn(shape, generator=g)
        return sampling.ddpm_step(noise_pred, t, x, alphas_cumprod=ddpm.alphas_cumprod, prev_timestep=t_prev,
                                  variance_noise=z).prev_sample

    by_hand = hand_loop(tiny_components, x_T, pairs, step, guidance_scale=5.0)
    from_pipe = final_latents(make_pipeline(tiny_components, ddpm), num_inference_steps=3, guidance_scale=5.0,
                              generator=gen(11))
    assert torch.equal(by_hand, from_pipe)


def test_guidance_rescale_by_hand_equals_the_pipelines(tiny_components):
    ddim = DDIMScheduler.from_config(tiny_components.scheduler.config)
    pairs = schedule(ddim, 2)
    x_T = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=gen(12))

    def step(noise_pred, noise_pred_text, t, t_prev, x):
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=0.7)
        return ddim.step(noise_pred, t, x).prev_sample

    by_hand = hand_loop(tiny_components, x_T, pairs, step, guidance_scale=15.0)
    pipe = make_pipeline(tiny_components, sampling.fresh_scheduler(ddim))
    from_pipe = final_latents(pipe, num_inference_steps=2, guidance_scale=15.0, guidance_rescale=0.7, latents=x_T)
    assert torch.equal(by_hand, from_pipe)
