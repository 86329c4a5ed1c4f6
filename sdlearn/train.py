"""Training code shared by the bundled model's recipe and the training notebook.

Stable Diffusion is trained in stages, and so is the teaching model:

1. CLIP: a text encoder and an image encoder learn, contrastively, to give matching
   image/caption pairs similar embeddings. Then the text encoder is frozen.
2. VAE: an autoencoder learns to squeeze 64x64x3 images into 8x8x4 latents and back
   (reconstruction + a small KL term). Then it is frozen.
3. UNet: given a noised latent, the timestep and the caption's text embeddings, it
   learns to predict the noise (:func:`diffusion_loss`, the DDPM objective).

:func:`fit` is the one training loop every stage uses: Hugging Face Accelerate for the
device (CPU, one GPU or several), AdamW with warm-up and cosine decay, an exponential
moving average of the weights if asked, a progress bar, a loss log, and checkpoints in
safetensors to resume from.

The training notebook (09) trains a smaller UNet with the same functions; for it this module
also has :func:`small_unet_config` (the recipe's UNet at any width) and :func:`captions_for` (the
prompt table a small pool needs); its loss curve, redrawn while ``fit`` runs, is
:class:`sdlearn.viz.LiveLoss`. A prompt table is :func:`sdlearn.text.encode` of the captions.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import text, world
from ._checks import check_int, is_number
from .images import to_model_range

# --------------------------------------------------------------------------------------
# Checkpoints, in safetensors (no pickles anywhere in the project).
# --------------------------------------------------------------------------------------


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, meta_state = {}, {}
    for pid, state in sd["state"].items():
        meta_state[str(pid)] = {}
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta_state[str(pid)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": meta_state}


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {int(pid): dict(scalars) for pid, scalars in meta["scalars"].items()}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: torch.nn.Module | None, state: dict) -> None:
    """Write model, EMA, optimizer (all safetensors) and ``state.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, folder / "ema.safetensors")
    tensors, meta = _optimizer_to_flat(optimizer)
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps(meta))
    (folder / "state.json").write_text(json.dumps(state))


def load_checkpoint(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema: torch.nn.Module | None) -> dict | None:
    """Restore what :func:`save_checkpoint` wrote; ``None`` if there is no checkpoint."""
    folder = Path(folder)
    if not (folder / "state.json").exists():
        return None
    model.load_state_dict(load_file(folder / "model.safetensors"))
    if ema is not None and (folder / "ema.safetensors").exists():
        ema.load_state_dict(load_file(folder / "ema.safetensors"))
    _optimizer_from_flat(optimizer, load_file(folder / "optimizer.safetensors"),
                         json.loads((folder / "optimizer.json").read_text()))
    return json.loads((folder / "state.json").read_text())


# --------------------------------------------------------------------------------------
# The one training loop.
# --------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit` returns: the loss of every step, and the time it took."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def cosine_lr(step: int, *, steps: int, warmup: int) -> float:
    """Learning-rate multiplier of step ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine to 0.

    diffusers' ``get_cosine_schedule_with_warmup`` (the schedule of its training scripts) from step ``warmup`` on;
    during the warm-up one step ahead of it, so that the first step learns at ``1 / warmup`` of the rate rather
    than at 0 (tests/test_train.py compares the two)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA's decay after optimiser step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``, so that
    the average forgets its random start quickly. diffusers' ``EMAModel`` uses the same warm-up from the second
    step on; at the first it copies the weights (decay 0) where this keeps a tenth of the start."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, *, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta: diffusers' ``EMAModel.step`` at that decay."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)


def fit(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, torch.Generator, torch.device], torch.Tensor],
        *, steps: int, lr: float, seed: int = 0, warmup: int = 100, weight_decay: float = 0.0,
        ema_decay: float | None = None, checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500,
        log_every: int = 50, log_file: str | Path | None = None, desc: str = "train",
        callback: Callable[[int, float], None] | None = None, progress: bool = True,
        accelerator=None) -> tuple[torch.nn.Module, FitResult]:
    """Train ``model`` for ``steps`` steps of ``loss = loss_fn(model, generator, device)``.

    ``loss_fn`` draws its own batch with ``generator`` (seeded with ``seed``), so a run is
    reproducible and resumable. Returns the trained model (the EMA copy when
    ``ema_decay`` is set) and a :class:`FitResult`. With ``checkpoint_dir``, a
    checkpoint is written every ``checkpoint_every`` steps and a run resumes from it.

    Under ``accelerate launch`` with several processes, process ``i`` seeds its generator with
    ``seed + i`` (so each GPU draws its own batches: one process is exactly the single-device
    run), and only the main process writes checkpoints and the loss log. If ``loss_fn`` (or anything
    in the loop) raises, the model is put back in the train/eval mode it came in.
    """
    check_int("steps", steps, expected="an int >= 1 (optimizer steps to take)", hint="Pass e.g. steps=200.")
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if not is_number(value, finite=True) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}. Pass e.g. lr=1e-3.")
    if ema_decay is not None and (not is_number(ema_decay) or not 0 < ema_decay < 1):
        raise ValueError(f"ema_decay must be a number in (0, 1) (e.g. 0.999) or None, got {ema_decay!r}.")
    was_training = model.training
    try:
        return _fit(model, loss_fn, steps=steps, lr=lr, seed=seed, warmup=warmup, weight_decay=weight_decay,
                    ema_decay=ema_decay, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                    log_every=log_every, log_file=log_file, desc=desc, callback=callback, progress=progress,
                    accelerator=accelerator)
    except BaseException:
        model.train(was_training)           # a failed run leaves the model in the mode it came in
        raise


def _fit(model, loss_fn, *, steps, lr, seed, warmup, weight_decay, ema_decay, checkpoint_dir, checkpoint_every,
         log_every, log_file, desc, callback, progress, accelerator):
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = accelerator or Accelerator()
    device = accelerator.device
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    rank = accelerator.process_index
    generator = torch.Generator(device="cpu").manual_seed(seed + rank)   # one stream of batches per process
    result, start = FitResult(), 0
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model=model, optimizer=optimizer, ema=ema)
        if state is not None:
            start = state["step"]
            result.losses = state["losses"]
            result.seconds = state["seconds"]
            if rank == 0:
                generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
            else:  # the checkpoint holds the main process's stream; the others start fresh, distinct ones
                generator.manual_seed(seed + rank + 1_000_003 * start)
    schedule = lambda s: cosine_lr(s, steps=steps, warmup=warmup)  # noqa: E731
    if start:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=start - 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not progress,
               mininterval=2.0, dynamic_ncols=True)
    t0 = time.perf_counter() - result.seconds
    for step in bar:
        loss = loss_fn(model, generator, device)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema_update(ema, accelerator.unwrap_model(model), decay=ema_decay_at(step, ema_decay))
        value = float(loss.detach())
        result.losses.append(value)
        if callback is not None:
            callback(step, value)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = float(np.mean(result.losses[-log_every:]))
            bar.set_postfix(loss=f"{recent:.4f}")
            if log_file is not None and accelerator.is_main_process:
                with open(log_file, "a") as f:
                    f.write(f"{desc},{step + 1},{recent:.6f},{time.perf_counter() - t0:.1f}\n")
        if (checkpoint_dir is not None and accelerator.is_main_process
                and ((step + 1) % checkpoint_every == 0 or step + 1 == steps)):
            save_checkpoint(checkpoint_dir, model=accelerator.unwrap_model(model), optimizer=optimizer, ema=ema,
                            state={"step": step + 1, "losses": result.losses, "seconds": time.perf_counter() - t0,
                                   "generator": generator.get_state().tolist()})
    result.seconds = time.perf_counter() - t0
    result.steps = steps
    trained = accelerator.unwrap_model(model)
    trained.eval()
    if ema is not None:
        ema.eval()
        return ema, result
    return trained, result


# --------------------------------------------------------------------------------------
# Data: the toy world as tensors.
# --------------------------------------------------------------------------------------


@dataclass
class WorldData:
    """A pool of rendered scenes: ``images`` [N, 3, H, W] uint8 and their ``scenes``."""

    images: torch.Tensor
    scenes: list[world.Scene]

    def __len__(self) -> int:
        return len(self.scenes)


def render_pool(seed: int, count: int, *, resolution: int = 64, two_object_prob: float = 0.35,
                progress: bool = False) -> WorldData:
    """Render items 0 .. count-1 of the world with ``seed`` (captions are drawn later, per step)."""
    from tqdm.auto import tqdm

    images = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    scenes = []
    for i in tqdm(range(count), desc="render", disable=not progress, mininterval=2.0):
        rng = np.random.default_rng([seed, i])
        scene = world.sample_scene(rng, two_object_prob=two_object_prob)
        images[i], _ = world.render(scene, resolution=resolution)
        scenes.append(scene)
    return WorldData(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), scenes)


def draw_captions(scenes: list[world.Scene], rng: np.random.Generator, *, empty_prob: float = 0.0) -> list[str]:
    """A fresh caption for each scene (full or partial, see :func:`sdlearn.world.caption`).

    With probability ``empty_prob`` the caption is ``""``: the unconditional case that
    classifier-free guidance needs at sampling time.
    """
    return ["" if empty_prob and rng.random() < empty_prob else world.caption(s, rng)[0] for s in scenes]


# --------------------------------------------------------------------------------------
# The three objectives.
# --------------------------------------------------------------------------------------


def clip_loss_fn(data: WorldData, tokenizer, *, batch_size: int) -> Callable:
    """Loss function for :func:`fit`: CLIP's symmetric contrastive loss on a random batch."""

    def loss_fn(model, generator, device):
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        captions = draw_captions([data.scenes[i] for i in idx.tolist()], rng)
        # padded to the batch's longest caption: CLIP pools at the first EOS, so its pooled output is the
        # same as with SD's max_length padding, for a fraction of the compute (the world's captions all fit)
        input_ids = text.tokenize(tokenizer, captions, device=device, warn=False, padding="longest")
        pixels = to_model_range(data.images[idx]).to(device)
        return model(input_ids=input_ids, pixel_values=pixels, return_loss=True).loss

    return loss_fn


def vae_loss(vae, images: torch.Tensor, *, kl_weight: float, generator: torch.Generator | None = None):
    """The VAE objective: ||x - decode(z)||^2 + kl_weight * KL(q(z|x) || N(0, I)), z ~ q(z|x).

    images: [B, 3, H, W] in [-1, 1]. Returns (loss, reconstruction MSE, KL per image).
    """
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator=generator)
    reconstruction = vae.decode(z).sample
    mse = F.mse_loss(reconstruction, images)
    kl = posterior.kl().mean()
    return mse + kl_weight * kl, mse, kl


def vae_loss_fn(data: WorldData, *, batch_size: int, kl_weight: float) -> Callable:
    """Loss function for :func:`fit`: :func:`vae_loss` on a random batch of the pool."""

    def loss_fn(model, generator, device):
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        images = to_model_range(data.images[idx]).to(device)
        return vae_loss(model, images, kl_weight=kl_weight)[0]

    return loss_fn


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Stable Diffusion's training objective on one batch (Ho et al. 2020, eq. 14).

    latents: [B, 4, h, w], already multiplied by the VAE's ``scaling_factor``.
    encoder_hidden_states: [B, L, D], the text encoder's last hidden state.
    t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
    loss = || eps - eps_theta(x_t, t, c) ||^2 (mean over all elements).
    """
    b = latents.shape[0]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    t, noise = t.to(latents.device), noise.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    noise_pred = unet(noisy, t, encoder_hidden_states=encoder_hidden_states).sample
    return F.mse_loss(noise_pred.float(), noise.float())


@dataclass
class LatentData:
    """Pre-encoded training data for the UNet: latent posteriors and a table of text embeddings.

    ``mean``/``std``: [N, 4, h, w], the VAE posterior of each image (unscaled).
    ``table``: [K, L, D] text embeddings of every caption in ``caption_index`` (K captions).
    """

    mean: torch.Tensor
    std: torch.Tensor
    scenes: list[world.Scene]
    table: torch.Tensor
    caption_index: dict[str, int]
    scaling_factor: float


@torch.no_grad()
def encode_pool(vae, data: WorldData, *, batch_size: int = 256, device: torch.device | str = "cpu",
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std of every image in the pool: two float32 [N, 4, H/8, W/8] tensors.

    The images go in at the VAE's own dtype (float16 on a GPU works); the results come back in
    float32 on the CPU, ready for a float32 training loop.
    """
    from tqdm.auto import tqdm

    means, stds = [], []
    for start in tqdm(range(0, len(data), batch_size), desc="encode", disable=not progress, mininterval=2.0):
        images = to_model_range(data.images[start:start + batch_size]).to(device, vae.dtype)
        dist = vae.encode(images).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def all_captions() -> list[str]:
    """Every caption :func:`sdlearn.world.caption` can produce (:func:`sdlearn.world.all_captions`), plus the
    empty one that :func:`draw_captions` adds for classifier-free guidance, sorted."""
    return sorted({"", *world.all_captions()})


def unet_loss_fn(data: LatentData, noise_scheduler, *, batch_size: int, empty_prob: float = 0.1) -> Callable:
    """Loss function for :func:`fit`: :func:`diffusion_loss` on a random batch.

    Each image gets a freshly drawn caption (full or partial), and with probability
    ``empty_prob`` the empty caption, so the model also learns the unconditional
    prediction that classifier-free guidance needs.
    """

    def loss_fn(model, generator, device):
        idx = torch.randint(len(data.scenes), (batch_size,), generator=generator)
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        captions = draw_captions([data.scenes[i] for i in idx.tolist()], rng, empty_prob=empty_prob)
        emb = data.table[[data.caption_index[c] for c in captions]].to(device)
        eps = torch.randn(data.mean[idx].shape, generator=generator)
        latents = (data.mean[idx] + data.std[idx] * eps) * data.scaling_factor
        return diffusion_loss(model, noise_scheduler, latents.to(device), emb, generator=generator)

    return loss_fn


# --------------------------------------------------------------------------------------
# For the training notebook: a small UNet, the captions a pool needs, a live loss curve.
# --------------------------------------------------------------------------------------


def small_unet_config(*, sample_size: int, cross_attention_dim: int, channels: Sequence[int] = (32, 64, 64),
                      heads: int = 4, latent_channels: int = 4, norm_num_groups: int = 32) -> dict:
    """Keyword arguments for a ``UNet2DConditionModel`` built like the bundled one, at any width.

    ``len(channels)`` levels of one ResNet each; every level but the deepest also has a
    transformer block whose cross-attention reads the text (as in SD 1.x, whose deepest level
    has none either), so latents of side ``sample_size`` go down to
    ``sample_size / 2**(len(channels) - 1)`` and back. ``sample_size``: the latent side
    (``unet.config.sample_size``); ``cross_attention_dim``: the text encoder's width
    (``text_encoder.config.hidden_size``); ``heads``: attention heads per layer.

    With the recipe's numbers (``sample_size=8, cross_attention_dim=128, channels=(64, 128, 128),
    heads=4``) it is the bundled UNet: :func:`sdlearn.recipe.unet_config` calls it with them.
    """
    channels = [int(c) for c in channels]
    if len(channels) < 2:
        raise ValueError(f"channels={channels} has {len(channels)} level(s); a conditioned UNet needs at least 2, "
                         "because the deepest level has no cross-attention and could not read the text. "
                         "Pass e.g. channels=(32, 64, 64).")
    if heads < 1 or any(c % norm_num_groups or c % heads for c in channels):
        raise ValueError(f"every width in channels={channels} must be a multiple of norm_num_groups="
                         f"{norm_num_groups} (GroupNorm splits the channels into that many groups) and of "
                         f"heads={heads} (each head gets an equal share). Use multiples of {norm_num_groups}, "
                         "e.g. channels=(32, 64, 64).")
    levels = len(channels)
    if sample_size < 1 or sample_size % 2 ** (levels - 1):
        raise ValueError(f"sample_size={sample_size} cannot be halved {levels - 1} times ({levels} levels): it must "
                         f"be a multiple of {2 ** (levels - 1)}. Use fewer levels, or the latent side of the model "
                         "(unet.config.sample_size).")
    return dict(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                block_out_channels=channels, layers_per_block=1,
                down_block_types=["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
                cross_attention_dim=cross_attention_dim, attention_head_dim=heads, norm_num_groups=norm_num_groups,
                act_fn="silu", flip_sin_to_cos=True, freq_shift=0)


def captions_for(scenes: Sequence[world.Scene]) -> list[str]:
    """Every caption :func:`draw_captions` can give these scenes, plus the empty one, sorted.

    A prompt table (:func:`sdlearn.text.encode` of them) with these rows covers every batch that
    :func:`unet_loss_fn` can draw from a pool of these scenes. For a small pool it is much
    shorter than :func:`all_captions` (which covers every scene of the world), so quicker to encode.
    """
    return sorted({"", *(c for scene in scenes for c in world.possible_captions(scene))})
