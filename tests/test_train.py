import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from sdlearn import images, recipe, text, train, viz, world
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


class OtherProcess:
    """What ``accelerate launch`` gives process ``index`` of several (the parts of Accelerator fit uses)."""

    device = torch.device("cpu")

    def __init__(self, index):
        self.process_index, self.is_main_process = index, index == 0

    def prepare(self, *objects):
        return objects

    def backward(self, loss):
        loss.backward()

    def unwrap_model(self, model):
        return model


def test_each_process_draws_its_own_batches_and_only_the_main_one_saves(tmp_path):
    def first_draws(accelerator, folder):
        draws = []

        def loss_fn(model, generator, device):
            draws.append(float(torch.rand((), generator=generator)))
            return quadratic_loss(model, generator, device)

        train.fit(Quadratic(), loss_fn, steps=3, lr=0.1, warmup=1, progress=False, checkpoint_dir=folder,
                  accelerator=accelerator)
        return draws

    single = first_draws(None, tmp_path / "single")
    assert first_draws(OtherProcess(0), tmp_path / "main") == single        # the main process = a single-device run
    assert first_draws(OtherProcess(1), tmp_path / "other") != single       # another process: other batches
    assert (tmp_path / "main" / "model.safetensors").exists()
    assert not (tmp_path / "other").exists()                                 # ... and it writes no checkpoint


def test_ema_is_returned_and_differs():
    model, _ = train.fit(Quadratic(), quadratic_loss, steps=30, lr=0.1, warmup=1, ema_decay=0.9, progress=False)
    assert model.w.requires_grad is False  # the EMA copy
    assert torch.all(model.w.abs() > 0)


def test_cosine_lr():
    assert train.cosine_lr(0, steps=100, warmup=10) == pytest.approx(0.1)
    assert train.cosine_lr(10, steps=100, warmup=10) == pytest.approx(1.0)
    assert train.cosine_lr(55, steps=100, warmup=10) == pytest.approx(0.5)
    assert train.cosine_lr(100, steps=100, warmup=10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("steps, warmup", [(100, 10), (37, 1), (12, 12)])
def test_cosine_lr_is_diffusers_schedule_one_step_ahead_during_the_warm_up(steps, warmup):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    library = []
    for _ in range(steps + 1):
        library.append(optimizer.param_groups[0]["lr"])                 # the multiplier at this step (lr 1)
        optimizer.step()
        schedule.step()
    for step in range(steps):
        expected = library[step + 1] if step < warmup else library[step]
        assert train.cosine_lr(step, steps=steps, warmup=warmup) == pytest.approx(expected, abs=1e-12), step
    assert library[0] == 0 and train.cosine_lr(0, steps=steps, warmup=warmup) == 1 / warmup   # the one difference


@pytest.mark.parametrize("steps", [0, "10", 2.5, True])
def test_fit_rejects_steps_that_are_not_a_positive_int(steps):
    with pytest.raises(ValueError, match=r"steps must be an int >= 1 .*got " + repr(steps).replace("'", ".")):
        train.fit(Quadratic(), quadratic_loss, steps=steps, lr=0.1)


def test_fit_rejects_a_bad_learning_rate_and_ema():
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        train.fit(Quadratic(), quadratic_loss, steps=2, lr="0.1")
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \(0, 1\)"):
        train.fit(Quadratic(), quadratic_loss, steps=2, lr=0.1, ema_decay=1.5)


def test_fit_puts_the_model_back_in_its_mode_when_the_loss_raises():
    model = Quadratic().eval()

    def broken(model, generator, device):
        raise KeyError("a caption that is not in the prompt table")

    with pytest.raises(KeyError):
        train.fit(model, broken, steps=3, lr=0.1, progress=False)
    assert not model.training


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
    ids = text.tokenize(tok, ["a red circle on the left", ""])
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
    short = text.tokenize(tok, captions, padding="longest")
    full = text.tokenize(tok, captions)
    assert short.shape[1] < full.shape[1] == 77
    with torch.no_grad():
        torch.testing.assert_close(clip_text_features(clip, short), clip_text_features(clip, full))


# --------------------------------------------------------------------------------------
# What the training notebook (09) adds.
# --------------------------------------------------------------------------------------


def test_small_unet_config_with_the_recipes_numbers_is_the_bundled_unet():
    r = recipe.Recipe()
    config = train.small_unet_config(sample_size=r.resolution // 8, cross_attention_dim=r.clip_hidden,
                                     channels=r.unet_channels, heads=r.unet_heads)
    assert config == recipe.unet_config(r)
    from sdlearn.models import BUNDLED_MODEL_DIR
    bundled = json.loads((BUNDLED_MODEL_DIR / "unet" / "config.json").read_text())
    assert {k: bundled[k] for k in config} == config      # the design the bundled UNet was trained with


def test_small_unet_config_builds_a_unet_that_reads_the_text():
    config = train.small_unet_config(sample_size=8, cross_attention_dim=16, channels=(32, 64), heads=2)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    text_a, text_b = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        out_a = unet(x, t, encoder_hidden_states=text_a).sample
        out_b = unet(x, t, encoder_hidden_states=text_b).sample
    assert out_a.shape == x.shape
    assert not torch.allclose(out_a, out_b)  # cross-attention: the text changes the prediction


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=(32,)), "at least 2"),
    (dict(channels=(32, 48)), "multiple of norm_num_groups=32"),
    (dict(channels=(32, 64), heads=3), "heads=3"),
    (dict(channels=(32, 64, 64), sample_size=6), "multiple of 4"),
])
def test_small_unet_config_rejects_widths_that_cannot_work(kwargs, message):
    kwargs = dict(dict(sample_size=8, cross_attention_dim=16), **kwargs)
    with pytest.raises(ValueError, match=message):
        train.small_unet_config(**kwargs)


def test_captions_for_covers_every_draw_and_nothing_outside_the_world():
    data = train.render_pool(3, 16)
    assert sum(len(scene.objects) == 2 for scene in data.scenes) >= 3  # both kinds of scene are covered
    table = train.captions_for(data.scenes)
    assert table == sorted(set(table)) and "" in table
    assert set(table) <= set(train.all_captions())
    assert len(table) < len(train.all_captions())
    drawn = set()
    for seed in range(300):
        drawn.update(train.draw_captions(data.scenes, np.random.default_rng(seed), empty_prob=0.1))
    # every draw is in the table, and (with 300 draws per scene) every caption of the table is drawn:
    # the rarest has a probability of 0.9 x 7.5% per draw, so the chance of missing any is below 1e-6
    assert drawn == set(table)


def test_moving_average():
    np.testing.assert_allclose(viz.moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(viz.moving_average([2, 4, 6], 10), [2, 3, 4])  # fewer at the start
    np.testing.assert_allclose(viz.moving_average([5.0], 1), [5.0])
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        viz.moving_average([1, 2], 0)


def test_loss_curve_draws_the_losses_and_their_average():
    losses = [1.0, 0.5, 0.4, 0.3]
    fig = viz.loss_curve(losses, window=2, steps=10, title="run")
    ax = fig.axes[0]
    raw, mean = ax.get_lines()
    np.testing.assert_allclose(raw.get_ydata(), losses)
    np.testing.assert_allclose(mean.get_ydata(), viz.moving_average(losses, 2))
    np.testing.assert_allclose(raw.get_xdata(), [1, 2, 3, 4])
    assert ax.get_xlim() == (0.0, 10.0) and ax.get_yscale() == "log" and ax.get_title() == "run"
    assert viz.loss_curve([0.5, -0.1], window=1).axes[0].get_yscale() == "linear"  # a log axis cannot show <= 0
    assert viz.loss_curve([]).axes[0].get_lines() == []  # the empty curve a notebook displays first


def test_live_loss_redraws_every_n_steps_and_at_the_end():
    shown = []
    live = viz.LiveLoss(shown.append, steps=10, every=4, window=3)
    _, res = train.fit(Quadratic(), quadratic_loss, steps=10, lr=0.1, warmup=1, callback=live, progress=False)
    assert live.losses == pytest.approx(res.losses)
    assert [len(fig.axes[0].get_lines()[0].get_ydata()) for fig in shown] == [4, 8, 10]
    quiet = viz.LiveLoss(None, steps=3)
    for step in range(3):
        quiet(step, 1.0 / (step + 1))
    assert quiet.losses == [1.0, 0.5, pytest.approx(1 / 3)]


@pytest.mark.parametrize("name", ["steps", "every", "window"])
def test_live_loss_rejects_bad_settings(name):
    kwargs = dict(steps=10, every=2, window=5)
    kwargs[name] = 0
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        viz.LiveLoss(None, **kwargs)


def test_encode_pool_returns_the_posterior_in_float32_whatever_the_vae_dtype():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=16).eval()
    data = train.render_pool(0, 5, resolution=16)
    mean, std = train.encode_pool(vae, data, batch_size=2)
    with torch.no_grad():
        dist = vae.encode(images.to_model_range(data.images)).latent_dist
    torch.testing.assert_close(mean, dist.mean)
    torch.testing.assert_close(std, dist.std)
    # a half-precision VAE (float16 on a GPU; bfloat16 here, which CPUs support) gets its own dtype in,
    # and float32 comes back for a float32 training loop
    half_mean, half_std = train.encode_pool(vae.to(torch.bfloat16), data, batch_size=2)
    assert half_mean.dtype == half_std.dtype == torch.float32
    torch.testing.assert_close(half_mean, mean, rtol=0.1, atol=0.1)


def test_ema_update_is_the_moving_average_formula():
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, as notebook 09 states it."""
    ema, model = Quadratic(), Quadratic()
    with torch.no_grad():
        ema.w.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.w.copy_(torch.tensor([3.0, 2.0, -1.0]))
    train.ema_update(ema, model, decay=0.9)
    torch.testing.assert_close(ema.w.detach(), 0.9 * torch.tensor([1.0, 2.0, 3.0]) + 0.1 * torch.tensor([3.0, 2.0, -1.0]))
    torch.testing.assert_close(model.w.detach(), torch.tensor([3.0, 2.0, -1.0]))  # the model itself is untouched


def test_fits_ema_is_diffusers_emamodel_from_the_second_step():
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ours = copy.deepcopy(model)
    library = EMAModel(model.parameters(), decay=0.99)
    theirs = copy.deepcopy(model)
    for step in range(12):                                              # the weights move; both averages follow
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        library.step(model.parameters())
        if step == 0:
            assert library.get_decay(1) == 0.0                          # EMAModel copies at its first step
            train.ema_update(ours, model, decay=0.0)
        else:
            assert library.get_decay(step + 1) == pytest.approx(train.ema_decay_at(step, 0.99), abs=1e-12)
            train.ema_update(ours, model, decay=train.ema_decay_at(step, 0.99))
        library.copy_to(theirs.parameters())
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert train.ema_decay_at(0, 0.99) == 0.1 and train.ema_decay_at(10**6, 0.99) == 0.99


# --------------------------------------------------------------------------------------
# The recipe command, end to end, on a miniature recipe (two steps a stage, narrow models):
# it checks the plumbing (stages, resume, export), not the quality, which the model card measures.
# --------------------------------------------------------------------------------------


def miniature_recipe(**changes) -> recipe.Recipe:
    r = recipe.Recipe(pool_size=64, clip_hidden=32, clip_text_layers=1, clip_vision_layers=1, clip_heads=2,
                      clip_steps=2, clip_batch=8, vae_channels=(16, 16, 16, 16), vae_steps=2, vae_batch=4,
                      unet_channels=(32, 32), unet_heads=2, unet_steps=2, unet_batch=4)
    return dataclasses.replace(r, **changes)


@pytest.fixture(scope="module")
def miniature_build(tmp_path_factory):
    work, out = tmp_path_factory.mktemp("recipe-work"), tmp_path_factory.mktemp("recipe-out")
    report = recipe.run(miniature_recipe(), work, out, progress=False, evaluate=False)
    return work, out, report


def test_recipe_exports_a_folder_plain_diffusers_loads(miniature_build):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    work, out, report = miniature_build
    assert set(report["timings_s"]) == {"render", "clip", "vae", "encode", "prompts", "unet"}
    weights = sorted(out.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"clip", "text_encoder", "unet", "vae"}
    for w in weights:
        with safe_open(w, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, w
    pipe = StableDiffusionPipeline.from_pretrained(out)              # no dtype: every part in float32
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    assert pipe.unet.config.block_out_channels == [32, 32]
    assert pipe.vae.config.scaling_factor == 0.18215      # measured on the pool, then folded to SD's
    assert type(pipe.scheduler).__name__ == recipe.SHIPPED_SCHEDULER
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert {k: v for k, v in saved.items() if k != "_diffusers_version"} == recipe.sampling_scheduler_config()
    # the fold keeps the latents the U-Net was trained on: the pool re-encoded, scaled, has unit variance
    data = train.render_pool(0, 64)
    with torch.no_grad():
        scaled = pipe.vae.encode(images.to_model_range(data.images)).latent_dist.mean * 0.18215
    measured = json.loads((out / "recipe.json").read_text())["measured_scaling_factor"]
    assert float(scaled.std()) == pytest.approx(1.0, rel=0.05) and measured != 0.18215
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    built = json.loads((out / "recipe.json").read_text())
    assert built["recipe"]["unet_steps"] == 2 and built["timings_s"] == report["timings_s"]


def test_recipe_resumes_finished_stages_without_training_again(miniature_build):
    work, out, report = miniature_build
    unet_file = work / "unet" / "final" / "diffusion_pytorch_model.safetensors"
    before = unet_file.stat().st_mtime_ns
    again = recipe.run(miniature_recipe(), work, out, progress=False, evaluate=False)
    assert again["timings_s"] == report["timings_s"]     # the stages' recorded times, not new ones
    assert unet_file.stat().st_mtime_ns == before


def test_recipe_refuses_a_work_folder_of_another_recipe(miniature_build):
    work, out, _ = miniature_build
    with pytest.raises(ValueError, match=r"different recipe \(unet_steps 2 -> 3\).*--work"):
        recipe.run(miniature_recipe(unet_steps=3), work, out, progress=False, evaluate=False)


def test_recipe_command_smoke_run_does_not_export_over_the_bundled_model(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(recipe, "run", lambda r, work, out, **kw: seen.update(r=r, out=out) or {})
    recipe.main(["--scale", "0.02", "--work", str(tmp_path / "w"), "--no-eval"])
    assert seen["out"] == tmp_path / "w" / "export" and seen["r"].unet_steps == 64
    recipe.main(["--work", str(tmp_path / "w2"), "--no-eval"])
    assert seen["out"] == recipe.DEFAULT_EXPORT


def test_recipe_command_reports_a_mismatched_work_folder(tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    (work / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe.Recipe().scaled(0.02))))
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--work", str(work), "--no-eval"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "holds a run of a different recipe (pool_size 2400 -> 24000, clip_steps 24 -> 1200" in message
