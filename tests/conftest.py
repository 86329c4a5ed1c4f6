"""Shared test fixtures: tiny random Stable Diffusion parts, built the way diffusers' fast tests build them.

Tests run offline: the Hugging Face Hub is switched off before any library reads the
setting, so nothing here (or in a test) can download.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["SDLEARN_PROGRESS"] = "0"        # tests (and the notebook kernels they start) keep no progress record
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_WORDS = ("a", "red", "green", "blue", "circle", "square", "on", "the", "left", "right", "photo", "of")
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def build_tiny_components(tokenizer_folder, *, seed: int = 0):
    """Tiny random SD parts on the CPU in float32, as an ``sdlearn.models.SDComponents``.

    U-Net: 2 stages (32, 64 channels), cross-attention width 32, sample_size 32. VAE: 2
    stages (32, 64), so it downsamples by 2 (not 8 like SD): a 32x32 image gives 16x16
    latents. Text encoder: CLIP with width 32, 2 layers, 4 heads. Tokenizer: word level,
    77 tokens. Scheduler: DDIM with SD's betas.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlearn.models import SDComponents
    from sdlearn.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(TINY_WORDS, tokenizer_folder, max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=32,
            sample_size=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=32,
                layer_norm_eps=1e-5,
                hidden_act="quick_gelu",
            )
        )
    scheduler = DDIMScheduler(
        **SD_BETAS, num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return SDComponents(
        name="tiny-test",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """Tiny random SD parts (see ``build_tiny_components``). Shared by the whole session:
    treat as read-only (``copy.deepcopy`` a part before changing it)."""
    return build_tiny_components(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory):
    """``tiny_components`` saved as a standard diffusers folder (model_index.json + 5 subfolders)."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny_model")
    c = tiny_components
    pipe = StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def bundled_pipe():
    """The bundled model as plain diffusers loads it: ``StableDiffusionPipeline.from_pretrained``, float32,
    progress bar off. Shared by the session: treat as read-only."""
    from diffusers import StableDiffusionPipeline

    from sdlearn.models import BUNDLED_MODEL_DIR

    pipe = StableDiffusionPipeline.from_pretrained(BUNDLED_MODEL_DIR, dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _grad_mode_is_left_as_found():
    """A test (or the code it calls) that switches autograd off globally breaks every later test that trains."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left switched off (torch.set_grad_enabled(False) without restoring it); "
                    "use `with torch.no_grad():` instead")


@pytest.fixture(scope="session")
def load_script():
    """Import one of the repository's scripts by its path: ``load_script("benchmarks/run_course.py")``."""

    def load(relative: str):
        path = ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module                    # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load

