import copy
import json
import os
import re
import shutil
import warnings

import huggingface_hub
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from sdlearn import models
from sdlearn.models import ModelLoadError

# The random-weight replica (1.07 B parameters, about 25 s and 4.5 GB of memory) is built by default;
# SDLEARN_FAST_TESTS=1 skips it for a quick local run.
REAL_REPLICA = os.environ.get("SDLEARN_FAST_TESTS") != "1"


@pytest.fixture(autouse=True)
def no_model_override(monkeypatch):
    monkeypatch.delenv(models.MODEL_ENV_VAR, raising=False)
    monkeypatch.delenv("SDLEARN_DEVICE", raising=False)


@pytest.fixture(scope="module")
def meta_replica():
    return models.sd15_replica(meta=True)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A copy of the tiny model folder that a test may break."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


# --- the SD 1.5 replica -------------------------------------------------------------------------


def test_sd15_configs_hold_the_published_values():
    cfg = models.load_sd15_configs()
    assert cfg["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert cfg["unet"]["cross_attention_dim"] == cfg["text_encoder"]["hidden_size"] == 768
    assert cfg["vae"]["scaling_factor"] == 0.18215
    assert cfg["text_encoder"]["max_position_embeddings"] == 77
    assert cfg["scheduler"]["_class_name"] == "PNDMScheduler"
    assert (cfg["scheduler"]["beta_start"], cfg["scheduler"]["beta_end"]) == (0.00085, 0.012)


def test_meta_replica_has_sd15_parameter_counts():
    sd = models.sd15_replica(meta=True)
    counts = sd.parameter_counts()
    diff = {k: counts[k] - models.SD15_PARAMETER_COUNTS[k] for k in counts}
    assert counts == models.SD15_PARAMETER_COUNTS, f"replica minus published: {diff}"
    assert sd.device == torch.device("meta") and sd.name == "sd15-replica-meta"
    assert all(p.is_meta for p in sd.unet.parameters())
    assert isinstance(sd.scheduler, PNDMScheduler)
    assert sd.vae.config.scaling_factor == 0.18215


def test_parameters_by_block(meta_replica):
    blocks = models.parameters_by_block(meta_replica.unet)
    assert list(blocks) == [f"down_blocks.{i}" for i in range(4)] + ["mid_block"] + [
        f"up_blocks.{i}" for i in range(4)
    ] + ["other"]
    assert sum(blocks.values()) == models.SD15_PARAMETER_COUNTS["unet"]
    others = ["conv_in", "time_embedding", "conv_norm_out", "conv_out"]
    assert blocks["other"] == sum(models.count_parameters(getattr(meta_replica.unet, n)) for n in others)


def test_count_parameters_is_the_librarys_num_parameters(meta_replica, tiny_components):
    assert models.count_parameters(torch.nn.Linear(3, 2)) == 3 * 2 + 2
    for c in (meta_replica, tiny_components):
        for part in (c.unet, c.vae, c.text_encoder):
            assert models.count_parameters(part) == part.num_parameters() == sum(p.numel() for p in part.parameters())
    assert models.count_parameters(meta_replica.unet) == models.SD15_PARAMETER_COUNTS["unet"]


def test_build_pipeline_is_diffusers_pipeline_without_a_safety_checker(tiny_components):
    c = tiny_components
    parts = {"vae": c.vae, "text_encoder": c.text_encoder, "tokenizer": c.tokenizer, "unet": c.unet,
             "scheduler": c.scheduler}
    pipe = models.build_pipeline(**parts)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert all(getattr(pipe, name) is part for name, part in parts.items())
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.config.requires_safety_checker is False
    made = copy.copy(c).make_pipeline()                     # the method calls it: same parts, same settings
    assert type(made) is type(pipe) and all(getattr(made, name) is part for name, part in parts.items())
    assert made.safety_checker is None and made.config.requires_safety_checker is False


def test_vae_scale_factor_is_the_pipelines(tiny_components, bundled_pipe):
    from sdlearn import vae as sdvae

    assert tiny_components.vae_scale_factor == sdvae.vae_scale_factor(tiny_components.vae) == 2
    assert models.build_pipeline(vae=tiny_components.vae, text_encoder=tiny_components.text_encoder,
                                 tokenizer=tiny_components.tokenizer, unet=tiny_components.unet,
                                 scheduler=tiny_components.scheduler).vae_scale_factor == 2
    assert sdvae.vae_scale_factor(bundled_pipe.vae) == bundled_pipe.vae_scale_factor == 8


def test_replica_tokenizer_fits_the_text_encoder(meta_replica):
    tok = meta_replica.tokenizer
    assert isinstance(tok, CLIPTokenizer) and tok.model_max_length == 77
    ids = tok("a photo of a red circle", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 77 and max(ids) < models.load_sd15_configs()["text_encoder"]["vocab_size"]
    assert len(tok) <= 49408


def test_meta_replica_via_load_and_env(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV_VAR, "sd15-replica-meta")
    sd = models.load()
    assert sd.name == "sd15-replica-meta" and sd.device.type == "meta"
    with pytest.raises(ValueError, match=r"'meta' device.*no weights.*load\('sd15-replica'\)"):
        sd.make_pipeline()
    assert "859,520,964" in sd.summary()


@pytest.mark.skipif(
    not REAL_REPLICA, reason="SDLEARN_FAST_TESTS=1: skips building 1.07 B random weights (~25 s)"
)
@pytest.mark.slow                       # SD 1.5's 1.07 billion parameters, initialised twice
def test_real_replica_is_seeded_and_matches_counts():
    from transformers import CLIPTextConfig

    rng_before = torch.random.get_rng_state()
    sd = models.load("sd15-replica", device="cpu")
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the build must not touch the global RNG"
    assert sd.parameter_counts() == models.SD15_PARAMETER_COUNTS
    assert sd.name == "sd15-replica" and not sd.unet.training
    w = sd.text_encoder.get_input_embeddings().weight
    assert w.device.type == "cpu" and w.dtype == torch.float32 and torch.isfinite(w).all()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # seed=0, and the text encoder is built first
        again = CLIPTextModel(CLIPTextConfig(**models.load_sd15_configs()["text_encoder"]))
    torch.testing.assert_close(again.get_input_embeddings().weight, w)


def test_replica_rejects_bad_seed():
    with pytest.raises(ValueError, match=r"seed must be an int >= 0, got -1"):
        models.sd15_replica(meta=True, seed=-1)


# --- loading a diffusers folder --------------------------------------------------------------


def public_config(obj) -> dict:
    """A diffusers config without bookkeeping keys (``_name_or_path``...), tuples as lists."""
    return json.loads(json.dumps({k: v for k, v in obj.config.items() if not k.startswith("_")}))


def test_load_folder_matches_saved_components(tiny_model_dir, tiny_components):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd = models.load(str(tiny_model_dir), device="cpu")
    assert not [w for w in caught if "torch_dtype" in str(w.message)], "deprecated dtype keyword used"
    assert sd.name == str(tiny_model_dir)
    assert (sd.device, sd.dtype) == (torch.device("cpu"), torch.float32)
    assert isinstance(sd.tokenizer, CLIPTokenizer)
    assert isinstance(sd.text_encoder, CLIPTextModel)
    assert isinstance(sd.vae, AutoencoderKL)
    assert isinstance(sd.unet, UNet2DConditionModel)
    assert isinstance(sd.scheduler, DDIMScheduler)
    for part in ("vae", "unet", "scheduler"):
        assert public_config(getattr(sd, part)) == public_config(getattr(tiny_components, part)), part
    assert sd.text_encoder.config.hidden_size == tiny_components.text_encoder.config.hidden_size
    assert sd.tokenizer.get_vocab() == tiny_components.tokenizer.get_vocab()
    assert sd.parameter_counts() == tiny_components.parameter_counts()
    for name, value in tiny_components.unet.state_dict().items():
        torch.testing.assert_close(sd.unet.state_dict()[name], value)
    assert not sd.unet.training and sd.pipeline is None
    table = sd.summary()
    for text in ["component", "UNet2DConditionModel", "DDIMScheduler", "float32", "cpu", "total"]:
        assert text in table


def test_load_with_pipeline_runs_two_steps(tiny_model_dir):
    sd = models.load(str(tiny_model_dir), device="cpu", pipeline=True)
    assert isinstance(sd.pipeline, StableDiffusionPipeline)
    assert sd.pipeline.unet is sd.unet and sd.pipeline.safety_checker is None
    out = sd.pipeline(
        "a red circle",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 3, 32, 32)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_model_name_from_env(monkeypatch, tiny_model_dir):
    assert models.resolve_model_name() == "bundled"
    monkeypatch.setenv(models.MODEL_ENV_VAR, str(tiny_model_dir))
    assert models.resolve_model_name() == str(tiny_model_dir)
    assert models.resolve_model_name("sd15-replica") == "sd15-replica"  # the argument wins
    sd = models.load(device="cpu")
    assert sd.name == str(tiny_model_dir) and isinstance(sd.scheduler, DDIMScheduler)


def test_fp16_on_cpu_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match=r"float16 was requested on the CPU"):
        models.load(str(tiny_model_dir), device="cpu", dtype=torch.float16)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match=r"unknown model 'sd-1.5'.*'bundled', 'sd15-replica'.*org/name"):
        models.load("sd-1.5")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model folder .*nowhere.* does not exist"):
        models.load(str(tmp_path / "nowhere"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"is a file; expected a model folder"):
        models.load(str(tmp_path / "weights.safetensors"))


def test_folder_without_model_index(model_copy):
    (model_copy / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no model_index.json.*save_pretrained"):
        models.load(str(model_copy))


def test_folder_missing_a_component(model_copy):
    shutil.rmtree(model_copy / "unet")
    with pytest.raises(ModelLoadError, match=r"missing the component folder\(s\) unet/"):
        models.load(str(model_copy))


def test_folder_missing_weights(model_copy):
    for weights in (model_copy / "vae").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(
        ModelLoadError, match=r"(?s)Could not load the vae from the local folder.*\.safetensors weights only"
    ):
        models.load(str(model_copy))


def test_folder_with_unknown_scheduler_class(model_copy):
    path = model_copy / "scheduler" / "scheduler_config.json"
    for bad in ("NoSuchScheduler", "AutoencoderKL"):
        config = json.loads(path.read_text()) | {"_class_name": bad}
        path.write_text(json.dumps(config))
        with pytest.raises(
            ModelLoadError, match=rf"scheduler class '{bad}', which is not a diffusers scheduler"
        ):
            models.load(str(model_copy))


def test_sdxl_folder_is_refused(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"SDXL-style model.*SD 1.x models only"):
        models.load(str(model_copy))


def test_bundled_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "BUNDLED_MODEL_DIR", tmp_path / "no-bundled-model")
    with pytest.raises(
        ModelLoadError, match=r"bundled model folder .*no-bundled-model does not exist.*sd15-replica"
    ):
        models.load("bundled")
    with pytest.raises(ModelLoadError, match=r"bundled model folder"):
        models.load()  # the default


HUB_ID = "no-such-org/no-such-sd-model"


def test_hub_id_offline_explains_what_to_do():
    with pytest.raises(ModelLoadError) as info:
        models.load(HUB_ID, device="cpu")
    message = str(info.value)
    assert HUB_ID in message
    assert "offline" in message and "HF_HUB_OFFLINE=1" in message
    assert "SDLEARN_MODEL=bundled" in message
    assert f"hf download {HUB_ID} --include" in message and "huggingface-cli download" in message
    assert "HF_HOME" in message
    for mirror in models.KNOWN_SD1_MIRRORS:
        assert mirror in message
    assert "Reason: LocalEntryNotFoundError" in message


def test_hub_id_failing_after_the_index(monkeypatch, tiny_model_dir):
    """model_index.json is cached but the weights are not: the error names the step."""

    def cached_only_configs(repo_id, filename, *, subfolder=None, **kwargs):
        return str(tiny_model_dir / (subfolder or "") / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached_only_configs)
    with pytest.raises(ModelLoadError, match=rf"(?s){HUB_ID}.*while loading its scheduler.*offline.*bundled"):
        models.load(HUB_ID, device="cpu")


def test_sd_guidance_scale_is_the_pipelines_default_and_every_default_uses_it():
    import inspect

    from sdlearn import evaluate, latents, sampling

    def default(fn):
        return inspect.signature(fn).parameters["guidance_scale"].default

    assert models.SD_GUIDANCE_SCALE == default(StableDiffusionPipeline.__call__) == 7.5
    for fn in (sampling.denoise, sampling.text_to_image, sampling.image_to_image, latents.sample_trajectory,
               evaluate.measure_localisation, evaluate.prompt_following, evaluate.seconds_per_image,
               evaluate.sampler_table):
        assert default(fn) is models.SD_GUIDANCE_SCALE, fn.__qualname__
    assert evaluate.SWEEP_SCALES[-1] is models.SD_GUIDANCE_SCALE
    assert not hasattr(evaluate, "SD_DEFAULT_GUIDANCE")      # one constant, in models


def test_recommended_guidance_scale(tmp_path, monkeypatch):
    assert models.recommended_guidance_scale("sd15-replica") == 7.5
    assert models.recommended_guidance_scale("stable-diffusion-v1-5/stable-diffusion-v1-5") == 7.5
    folder = tmp_path / "model"
    folder.mkdir()
    assert models.recommended_guidance_scale(str(folder)) == 7.5  # no evaluation.json
    (folder / "evaluation.json").write_text('{"guidance_scale": 3.0}')
    assert models.recommended_guidance_scale(str(folder)) == 3.0
    monkeypatch.setenv("SDLEARN_MODEL", str(folder))
    assert models.recommended_guidance_scale() == 3.0
    bundled = json.loads((models.BUNDLED_MODEL_DIR / "evaluation.json").read_text())["guidance_scale"]
    assert models.recommended_guidance_scale("bundled") == bundled


def test_a_hub_id_with_no_network_fails_at_once_and_says_how_to_work_offline(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    calls = []

    def download(repo_id, filename, *, subfolder=None, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert not models.hub_reachable(timeout=0.1)
    with pytest.raises(ModelLoadError) as info:
        models.load(HUB_ID, device="cpu")
    assert calls == [True]                                   # the cache only: no retries over a dead network
    message = str(info.value)
    assert "cannot be reached from this machine" in message and "set HF_HUB_OFFLINE=1" in message


def test_weights_missing_a_tensor_are_refused_by_name(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    for part, file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        folder = shutil.copytree(tiny_model_dir, tmp_path / part)
        path = folder / part / file
        tensors = load_file(path)
        dropped = sorted(tensors)[-1]
        tensors.pop(dropped)
        save_file(tensors, path, metadata={"format": "pt"})
        with pytest.raises(ModelLoadError, match=rf"(?s){part}'s weights do not fit its config \(1 tensor\(s\) "
                                                 rf"missing: {re.escape(dropped)}\).*copy the {part}/ folder"):
            models.load(str(folder), device="cpu")
