import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from sdlearn import recipe, train, world
from sdlearn.text import clip_text_features
from sdlearn.tokenizer import build_tokenizer


class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def quadratic_loss(model, generator, device):
    target = torch.tensor([1.0, -2.0, 3.0]) + 0.01 * torch.randn(3, generator=generator)
    return ((model.w - target.to(device)) ** 2).sum()


class Interrupted(Exception):
    pass


def interrupt_at(n):
    def callback(step, loss):
        if step + 1 == n:
            raise Interrupted

    return callback


def test_fit_learns_and_resumes_exactly(tmp_path):
    kwargs = dict(steps=60, lr=0.3, warmup=5, progress=False)
    full, res = train.fit(Quadratic(), quadratic_loss, **kwargs)
    assert res.losses[-1] < 0.01 * res.losses[0]
    # interrupt after 30 steps (checkpoint written at 30), then resume to 60:
    # the same weights as the uninterrupted run, to float precision
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        train.fit(Quadratic(), quadratic_loss, checkpoint_dir=ckpt, checkpoint_every=30,
                  callback=interrupt_at(31), **kwargs)
    assert (ckpt / "model.safetensors").exists() and (ckpt / "optimizer.safetensors").exists()
    resumed, res2 = train.fit(Quadratic(), quadratic_loss, checkpoint_dir=ckpt, **kwargs)
    torch.testing.assert_close(resumed.w, full.w)
    assert res2.losses == pytest.approx(res.losses)


def test_ema_is_returned_and_differs():
    model, _ = train.fit(Quadratic(), quadratic_loss, steps=30, lr=0.1, warmup=1, ema_decay=0.9, progress=False)
    assert model.w.requires_grad is False  # the EMA copy
    assert torch.all(model.w.abs() > 0)


def test_cosine_lr():
    assert train.cosine_lr(0, steps=100, warmup=10) == pytest.approx(0.1)
    assert train.cosine_lr(10, steps=100, warmup=10) == pytest.approx(1.0)
    assert train.cosine_lr(55, steps=100, warmup=10) == pytest.approx(0.5)
    assert train.cosine_lr(100, steps=100, warmup=10) == pytest.approx(0.0, abs=1e-12)


def test_fit_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train.fit(Quadratic(), quadratic_loss, steps=0, lr=0.1)


def test_diffusion_loss_is_the_ddpm_objective():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=8).eval()
    sched = DDPMScheduler(**recipe.noise_scheduler_config())
    latents, cond = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 16)
    loss = train.diffusion_loss(unet, sched, latents, cond, generator=torch.Generator().manual_seed(1))
    # the same draws, by hand
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (3,), generator=g)
    eps = torch.randn(latents.shape, generator=g)
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    with torch.no_grad():
        expected = ((unet(x_t, t, cond).sample - eps) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_vae_loss_parts():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4, norm_num_groups=16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, mse, kl = train.vae_loss(vae, x, kl_weight=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, mse + 0.5 * kl)
    dist = vae.encode(x).latent_dist
    kl_by_hand = 0.5 * (dist.mean ** 2 + dist.var - 1 - dist.logvar).sum(dim=[1, 2, 3]).mean()
    torch.testing.assert_close(kl, kl_by_hand)


def test_every_drawn_caption_is_in_the_prompt_table():
    table = set(train.all_captions())
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(500)]
    for caption in train.draw_captions(scenes, rng, empty_prob=0.1):
        assert caption in table
    assert "" in table


def test_unet_loss_fn_runs_with_latent_data(tmp_path):
    tok = build_tokenizer(world.VOCABULARY, tmp_path / "tok")
    data = train.render_pool(0, 8)
    captions = train.all_captions()
    latent = train.LatentData(mean=torch.randn(8, 4, 8, 8), std=torch.ones(8, 4, 8, 8) * 0.1, scenes=data.scenes,
                              table=torch.randn(len(captions), tok.model_max_length, 16),
                              caption_index={c: i for i, c in enumerate(captions)}, scaling_factor=0.5)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=8)
    fn = train.unet_loss_fn(latent, DDPMScheduler(**recipe.noise_scheduler_config()), batch_size=4)
    loss = fn(unet, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_text_encoder_from_clip_equals_clip_text_tower(tmp_path):
    tok = build_tokenizer(world.VOCABULARY, tmp_path / "tok")
    r = recipe.Recipe(clip_hidden=32, clip_text_layers=1, clip_vision_layers=1, clip_heads=2)
    from transformers import CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(recipe.clip_config(r, tok)).eval()
    text_encoder = recipe.text_encoder_from_clip(clip)
    ids = train.tokenize(tok, ["a red circle on the left", ""])
    torch.testing.assert_close(text_encoder(ids).last_hidden_state, clip.text_model(ids).last_hidden_state)


def test_recipe_scaled():
    full = recipe.Recipe()
    r = full.scaled(0.01)
    for name in ("clip_steps", "vae_steps", "unet_steps"):
        assert getattr(r, name) == max(2, round(getattr(full, name) * 0.01)), name
    assert r.pool_size == max(256, int(full.pool_size * 0.05))
    assert r.unet_channels == full.unet_channels and r.seed == full.seed  # only the lengths change


def test_clip_pooled_output_does_not_depend_on_padding(tmp_path):
    """Why CLIP can train on captions padded to the batch's longest: causal mask + EOS pooling."""
    from transformers import CLIPModel

    tok = build_tokenizer(world.VOCABULARY, tmp_path / "tok")
    r = recipe.Recipe(clip_hidden=32, clip_text_layers=2, clip_vision_layers=1, clip_heads=2)
    torch.manual_seed(0)
    clip = CLIPModel(recipe.clip_config(r, tok)).eval()
    captions = ["a red circle", "a big blue square at the top and a small green triangle at the bottom"]
    short = train.tokenize(tok, captions, padding="longest")
    full = train.tokenize(tok, captions)
    assert short.shape[1] < full.shape[1] == 77
    with torch.no_grad():
        torch.testing.assert_close(clip_text_features(clip, short), clip_text_features(clip, full))
