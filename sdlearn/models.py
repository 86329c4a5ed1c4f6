"""One switch for the model every notebook uses: bundled, an SD 1.5 replica, or real SD 1.x weights.

Stable Diffusion is five parts: a tokenizer and a text encoder (CLIP) that turn the
prompt into vectors, a VAE that maps images to and from latents, a U-Net that predicts
noise, and a scheduler that turns noise predictions into denoising steps. ``load`` returns
those five parts, chosen by one name:

- ``"bundled"`` (default): the small teaching model shipped in ``sdlearn/bundled/``;
  works offline, runs on a CPU.
- ``"sd15-replica"``: SD 1.5's exact architecture (same configs, same parameter counts)
  with random weights; ``"sd15-replica-meta"`` the same on PyTorch's ``meta`` device,
  which allocates no memory: for touring the architecture.
- anything else: a diffusers-format SD 1.x repository id on the Hugging Face Hub
  (e.g. ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``) or a local folder path.

The name comes from the argument, else the environment variable ``SDLEARN_MODEL``,
else ``"bundled"``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import huggingface_hub
import huggingface_hub.constants
import torch
import transformers
from diffusers import AutoencoderKL, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdlearn._checks import check_int, is_number
from sdlearn.device import _parse_dtype, resolve
from sdlearn.vae import vae_scale_factor

BUNDLED_MODEL_DIR = Path(__file__).parent / "bundled" / "sdlearn-tiny"
SD15_CONFIG_DIR = Path(__file__).parent / "configs" / "sd15"
MODEL_ENV_VAR = "SDLEARN_MODEL"

BUNDLED = "bundled"
SD15_REPLICA = "sd15-replica"
SD15_REPLICA_META = "sd15-replica-meta"
KNOWN_MODEL_NAMES = (BUNDLED, SD15_REPLICA, SD15_REPLICA_META)

# Diffusers-format SD 1.x repositories. runwayml/stable-diffusion-v1-5 was taken down in 2024;
# repositories move, so the loader's error lists these.
KNOWN_SD1_MIRRORS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-legacy/stable-diffusion-v1-5",
    "CompVis/stable-diffusion-v1-4",
)

COMPONENT_NAMES = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")

# StableDiffusionPipeline's default classifier-free guidance scale, right for real SD 1.x: the one home of
# 7.5 in the package (sampling, latents, attention and evaluate take their defaults from it).
SD_GUIDANCE_SCALE = 7.5

# Parameter counts of the published SD 1.5 weights; the replica built from configs/sd15 matches them.
SD15_PARAMETER_COUNTS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}

# Words for the replica's stand-in tokenizer when the bundled model is not there.
REPLICA_FALLBACK_WORDS = (
    "a", "an", "the", "photo", "painting", "of", "on", "in", "with", "and",
    "red", "green", "blue", "yellow", "black", "white",
    "circle", "square", "triangle", "cat", "dog", "house", "tree", "sky",
    "small", "large", "left", "right", "top", "bottom",
)  # fmt: skip

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files the loader needs from a hub repository (not the safety checker, not the root .ckpt/.safetensors).
_DOWNLOAD_PATTERNS = (
    '"*.json" "*.txt" "*/diffusion_pytorch_model.safetensors" "text_encoder/model.safetensors"'
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which, why, and what to do."""


@dataclass
class SDComponents:
    """The five parts of Stable Diffusion, where they live, and (on request) the diffusers pipeline.

    ``tokenizer``: prompt -> token ids ``[B, 77]``; ``text_encoder``: ids -> ``[B, 77, d]``;
    ``vae``: images ``[B, 3, H, W]`` in [-1, 1] <-> latents ``[B, 4, H/f, W/f]``;
    ``unet``: noisy latents, timestep, text embeddings -> predicted noise;
    ``scheduler``: the noise schedule and the update rule.
    """

    name: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    device: torch.device
    dtype: torch.dtype
    pipeline: StableDiffusionPipeline | None = None

    @property
    def vae_scale_factor(self) -> int:
        """How much the VAE shrinks each side: 2 ** (number of VAE blocks - 1), 8 for SD.

        ``sdlearn.vae.vae_scale_factor(self.vae)``, the number a pipeline stores as ``pipe.vae_scale_factor``.
        """
        return vae_scale_factor(self.vae)

    @property
    def image_size(self) -> int:
        """The image side the UNet was trained for: latent side x VAE factor (64 bundled, 512 SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (4 in SD 1.x)."""
        return int(self.unet.config.in_channels)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network: ``{"unet": ..., "vae": ..., "text_encoder": ...}``."""
        return {
            "unet": count_parameters(self.unet),
            "vae": count_parameters(self.vae),
            "text_encoder": count_parameters(self.text_encoder),
        }

    def summary(self) -> str:
        """A table with one row per component: class, parameters, dtype, device."""
        rows = [("component", "class", "parameters", "dtype", "device")]
        for part in COMPONENT_NAMES:
            obj = getattr(self, part)
            if isinstance(obj, torch.nn.Module):
                first = next(obj.parameters(), None)
                dtype = str(first.dtype).removeprefix("torch.") if first is not None else "-"
                device = str(first.device) if first is not None else "-"
                rows.append((part, type(obj).__name__, f"{count_parameters(obj):,}", dtype, device))
            else:
                rows.append((part, type(obj).__name__, "-", "-", "-"))
        rows.append(("total", "", f"{sum(self.parameter_counts().values()):,}", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(
                cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return f"model: {self.name}\n" + "\n".join(lines)

    def make_pipeline(self, *, progress_bar: bool = False) -> StableDiffusionPipeline:
        """Wrap the parts in diffusers' ``StableDiffusionPipeline`` (no safety checker), store and return it.

        The progress bar is off by default so notebook outputs stay clean.
        """
        if self.device.type == "meta":
            raise ValueError(
                f"model {self.name!r} lives on the 'meta' device: it has shapes but no weights, "
                "so a pipeline built from it cannot run. Use load('sd15-replica') for random "
                "weights, or load('bundled') for a trained model."
            )
        self.pipeline = build_pipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, progress_bar=progress_bar)
        return self.pipeline


def build_pipeline(*, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                   unet: UNet2DConditionModel, scheduler: SchedulerMixin,
                   progress_bar: bool = False) -> StableDiffusionPipeline:
    """diffusers' ``StableDiffusionPipeline`` from SD 1.x's five parts, with no safety checker.

    The one place the package builds a pipeline (``SDComponents.make_pipeline``, the recipe's export and
    the evaluation call it). ``safety_checker=None`` with ``requires_safety_checker=False``, as diffusers
    documents for models without one: the bundled model draws shapes, and the replica has random weights.
    The progress bar is off by default so notebook outputs stay clean.
    """
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (shared ones once) of ``module``; works on the meta device too.

    A whole diffusers or transformers model answers with the library's own ``module.num_parameters()``;
    any other ``torch.nn.Module`` (a U-Net block, one layer) with the same sum over ``module.parameters()``.
    """
    if isinstance(module, (diffusers.ModelMixin, transformers.PreTrainedModel)):
        return module.num_parameters()
    return sum(p.numel() for p in module.parameters())


def parameters_by_block(unet: UNet2DConditionModel) -> dict[str, int]:
    """Parameters of each U-Net stage, in data-flow order.

    Keys: ``down_blocks.0`` ... ``mid_block``, ``up_blocks.0`` ..., and ``other`` for the
    rest (``conv_in``, ``time_embedding``, ``conv_norm_out``, ``conv_out``, ...). The
    values sum to ``count_parameters(unet)``.
    """
    counts: dict[str, int] = {}
    for i, block in enumerate(unet.down_blocks):
        counts[f"down_blocks.{i}"] = count_parameters(block)
    if unet.mid_block is not None:
        counts["mid_block"] = count_parameters(unet.mid_block)
    for i, block in enumerate(unet.up_blocks):
        counts[f"up_blocks.{i}"] = count_parameters(block)
    counts["other"] = count_parameters(unet) - sum(counts.values())
    return counts


def recommended_guidance_scale(components: "SDComponents | str | None" = None) -> float:
    """The classifier-free guidance scale to sample this model with.

    A model folder built by ``sdlearn.recipe`` (the bundled model among them) records the
    scale its evaluation chose, in ``evaluation.json`` (see its model card); any other model
    (real SD 1.x, the replica) gets ``SD_GUIDANCE_SCALE``, diffusers' default 7.5.
    ``components``: an ``SDComponents``, a model name as for :func:`load`, or None for
    ``$SDLEARN_MODEL``.
    """
    name = components.name if isinstance(components, SDComponents) else resolve_model_name(components)
    if name in (SD15_REPLICA, SD15_REPLICA_META):
        return SD_GUIDANCE_SCALE
    folder = BUNDLED_MODEL_DIR if name == BUNDLED else Path(name).expanduser()
    report = folder / "evaluation.json"
    if report.is_file():
        scale = json.loads(report.read_text(encoding="utf-8")).get("guidance_scale")
        if is_number(scale):
            return float(scale)
    return SD_GUIDANCE_SCALE


def resolve_model_name(model: str | None = None) -> str:
    """The model name to use: ``model``, else ``$SDLEARN_MODEL``, else ``"bundled"``."""
    if model is not None:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"model must be a str (a name, hub id or folder path), got {type(model).__name__}."
            )
        return os.fspath(model).strip()
    from_env = os.environ.get(MODEL_ENV_VAR, "").strip()
    return from_env or BUNDLED


def load_sd15_configs() -> dict[str, dict[str, Any]]:
    """SD 1.5's published configs from ``sdlearn/configs/sd15/``: keys unet, vae, text_encoder, scheduler."""
    return {
        part: json.loads((SD15_CONFIG_DIR / f"{part}_config.json").read_text(encoding="utf-8"))
        for part in ("unet", "vae", "text_encoder", "scheduler")
    }


def _scheduler_class(name: str | None, where: str) -> type[SchedulerMixin]:
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelLoadError(
            f"{where} names the scheduler class {name!r}, which is not a diffusers scheduler "
            f"(diffusers {diffusers.__version__}). Expected e.g. 'PNDMScheduler' or 'DDIMScheduler' "
            "in the '_class_name' field of scheduler/scheduler_config.json; fix that field or "
            "upgrade diffusers."
        )
    return cls


def _replica_tokenizer() -> CLIPTokenizer:
    """The bundled model's tokenizer if present, else a small word-level one built in a temp folder."""
    bundled = BUNDLED_MODEL_DIR / "tokenizer"
    if bundled.is_dir():
        return CLIPTokenizer.from_pretrained(str(bundled))
    from sdlearn.tokenizer import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="sdlearn-tokenizer-") as folder:
        return build_tokenizer(REPLICA_FALLBACK_WORDS, folder, max_length=77)


def sd15_replica(
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    meta: bool = False,
    seed: int = 0,
) -> SDComponents:
    """SD 1.5's architecture with random weights, built from ``sdlearn/configs/sd15/``.

    U-Net, VAE, text encoder and scheduler use SD 1.5's published configs, so shapes and
    parameter counts equal the real model's (``SD15_PARAMETER_COUNTS``); the weights are
    random (seeded by ``seed``), so it draws noise, not pictures. ``meta=True`` builds on
    PyTorch's ``meta`` device: shapes only, no memory, instant.

    The tokenizer is NOT CLIP's: real SD uses CLIP's 49,408-entry BPE vocabulary, which
    cannot be downloaded offline. The replica uses the bundled model's tokenizer if it is
    installed, else a small word-level ``CLIPTokenizer`` (``sdlearn.tokenizer``). Both are
    the same class, pad to the same length (77), and give ids below 49,408, so the text
    encoder accepts them; only the words the ids stand for differ.
    """
    check_int("seed", seed, low=0)
    configs = load_sd15_configs()
    tokenizer = _replica_tokenizer()
    scheduler_cls = _scheduler_class(
        configs["scheduler"].get("_class_name"), str(SD15_CONFIG_DIR / "scheduler_config.json")
    )
    scheduler = scheduler_cls.from_config(configs["scheduler"])

    def build() -> tuple[CLIPTextModel, AutoencoderKL, UNet2DConditionModel]:
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        vae = AutoencoderKL.from_config(configs["vae"])
        unet = UNet2DConditionModel.from_config(configs["unet"])
        return text_encoder, vae, unet

    if meta:
        device, dtype = torch.device("meta"), _parse_dtype(dtype)
        with torch.device("meta"):
            text_encoder, vae, unet = build()
    else:
        device, dtype = resolve(device, dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text_encoder, vae, unet = build()
    for module in (text_encoder, vae, unet):
        module.to(device=device).eval()
        if dtype != torch.float32:  # built in float32; cast only when asked (diffusers logs a note on casts)
            module.to(dtype=dtype)
    return SDComponents(
        name=SD15_REPLICA_META if meta else SD15_REPLICA,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        device=device,
        dtype=dtype,
    )


def _summary(err: BaseException) -> str:
    """The first line of ``err`` (and of its cause), as ``ClassName: text``."""
    parts = []
    seen = err
    for _ in range(2):
        if seen is None:
            break
        text = next((line.strip() for line in str(seen).splitlines() if line.strip()), "")
        parts.append(f"{type(seen).__name__}: {text}" if text else type(seen).__name__)
        seen = seen.__cause__
    return " <- ".join(parts)


def _offline_mode() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub's server (``HF_ENDPOINT``) accepts a connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _hub_error(repo_id: str, step: str, err: BaseException) -> ModelLoadError:
    folder = f"./{repo_id.split('/')[-1]}"
    lines = [
        f"Could not load the model {repo_id!r} from the Hugging Face Hub ({step}).",
        f"Reason: {_summary(err)}",
    ]
    if _offline_mode():
        lines.append(
            "HF_HUB_OFFLINE=1 is set (offline mode), so only the local cache was searched, "
            "and it does not have this model."
        )
    if isinstance(err, GatedRepoError) or isinstance(err.__cause__, GatedRepoError):
        lines.append(
            f"The repository is gated: accept its licence on https://huggingface.co/{repo_id} "
            "and log in with `hf auth login`."
        )
    lines += [
        "How to fix it:",
        "  - On a machine with internet, download the files the loader needs:",
        f"      hf download {repo_id} --include {_DOWNLOAD_PATTERNS} --local-dir {folder}",
        "    (older huggingface_hub: `huggingface-cli download` with the same arguments),",
        f"    then pass that folder: load('{folder}') or SDLEARN_MODEL={folder}.",
        "  - Or set HF_HOME to a Hugging Face cache that already has it.",
        "  - Check the id: SD 1.x repositories have moved before "
        "(runwayml/stable-diffusion-v1-5 was taken down).",
        f"    Known diffusers-format SD 1.x repositories: {', '.join(KNOWN_SD1_MIRRORS)}.",
        "  - To work offline with a cached model, set HF_HUB_OFFLINE=1: nothing is fetched, "
        "the cache is read at once.",
        "  - If you are offline, use the model that ships with sdlearn: "
        f"SDLEARN_MODEL={BUNDLED} (or load('{BUNDLED}')),",
        f"    or the random-weight architecture replica: load('{SD15_REPLICA}').",
    ]
    return ModelLoadError("\n".join(lines))


def _check_model_index(index: dict[str, Any], where: str) -> None:
    if "text_encoder_2" in index or "tokenizer_2" in index:
        raise ModelLoadError(
            f"{where} is an SDXL-style model (it has text_encoder_2/tokenizer_2); sdlearn loads "
            f"SD 1.x models only. Use one of {', '.join(KNOWN_SD1_MIRRORS)}, or '{BUNDLED}'."
        )
    missing = [part for part in COMPONENT_NAMES if not index.get(part) or index[part] == [None, None]]
    if missing:
        raise ModelLoadError(
            f"{where}'s model_index.json lists no {', '.join(missing)}. A Stable Diffusion 1.x "
            f"model needs all of {', '.join(COMPONENT_NAMES)}; save one with "
            "StableDiffusionPipeline.save_pretrained(folder, safe_serialization=True)."
        )


def _check_folder(folder: Path) -> dict[str, Any]:
    """Check ``folder`` is a diffusers SD 1.x folder; return the scheduler config."""
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder} has no model_index.json, so it is not a diffusers-format model folder. "
            f"Expected model_index.json plus the subfolders {', '.join(COMPONENT_NAMES)}. "
            "Save one with StableDiffusionPipeline.save_pretrained(folder, safe_serialization=True), "
            "or check the path."
        )
    _check_model_index(json.loads((folder / "model_index.json").read_text(encoding="utf-8")), str(folder))
    missing = [part for part in COMPONENT_NAMES if not (folder / part).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{folder} is missing the component folder(s) {', '.join(missing)}/. Expected "
            f"subfolders {', '.join(COMPONENT_NAMES)}; copy the missing part(s) from the source "
            "model, or save the model again with save_pretrained."
        )
    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} is missing scheduler/scheduler_config.json, the scheduler's config.")
    return json.loads(config_path.read_text(encoding="utf-8"))


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide the libraries' per-file "Loading weights" progress bars (notebook outputs stay clean)."""
    t_logging, d_logging = transformers.utils.logging, diffusers.utils.logging
    t_was, d_was = t_logging.is_progress_bar_enabled(), d_logging.is_progress_bar_enabled()
    t_logging.disable_progress_bar()
    d_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # diffusers 0.42 passes a keyword that huggingface_hub >= 1.0 deprecated: noise, not a problem.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            yield
    finally:
        if t_was:
            t_logging.enable_progress_bar()
        if d_was:
            d_logging.enable_progress_bar()


def _load_parts(
    source: str, scheduler_config: dict[str, Any], *, device: torch.device, dtype: torch.dtype, fail,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """Each component's ``from_pretrained(source, subfolder=...)``; ``fail(part, err)`` makes the error."""
    scheduler_cls = _scheduler_class(
        scheduler_config.get("_class_name"), f"{source}/scheduler/scheduler_config.json"
    )
    # output_loading_info: the libraries only log a checkpoint that lacks tensors (and fill them with
    # random numbers, or leave them on the meta device); here it is an error that names them.
    cache = {"local_files_only": True} if local_files_only else {}
    model_kwargs = {"use_safetensors": True, "output_loading_info": True, **cache}
    loaders = {
        "scheduler": lambda: scheduler_cls.from_pretrained(source, subfolder="scheduler", **cache),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **cache),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", dtype=dtype, **model_kwargs
        ),
        "vae": lambda: AutoencoderKL.from_pretrained(
            source, subfolder="vae", dtype=dtype, **model_kwargs
        ),
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", dtype=dtype, **model_kwargs
        ),
    }
    parts: dict[str, Any] = {}
    for part, loader in loaders.items():
        try:
            with _quiet_loading():
                loaded = loader()
            if isinstance(loaded, tuple):                   # (model, loading info)
                loaded, info = loaded
                _check_loading_info(part, info)
                loaded = loaded.to(device=device).eval()    # already in `dtype`: from_pretrained cast it
            parts[part] = loaded
        except (OSError, ValueError, EntryNotFoundError, NotImplementedError, RuntimeError) as err:
            raise fail(part, err) from err
    return parts


class IncompleteWeightsError(ValueError):
    """A checkpoint's tensors do not match the model its config describes."""


def _check_loading_info(part: str, info: dict) -> None:
    """Raise :class:`IncompleteWeightsError` naming the tensors a checkpoint lacks, has too many of, or has
    in the wrong shape (buffers that are not weights, ``position_ids``, do not count)."""
    problems = []
    for kind, label in (("missing_keys", "missing"), ("unexpected_keys", "not in the model"),
                        ("mismatched_keys", "of the wrong shape")):
        keys = [k if isinstance(k, str) else k[0] for k in info.get(kind, [])]
        keys = [k for k in keys if not k.endswith("position_ids")]
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} tensor(s) {label}: {shown}")
    if problems:
        raise IncompleteWeightsError(
            f"the {part}'s weights do not fit its config ({'; '.join(problems)}). A part loaded like this would run "
            "with those tensors random (or not at all). The file is damaged or belongs to another model: copy the "
            f"{part}/ folder again from the source, or re-save the model with save_pretrained."
        )


def _local_error(folder: Path, part: str, err: BaseException) -> ModelLoadError:
    hint = ""
    if "safetensors" in str(err).lower() or not any((folder / part).glob("*.safetensors")):
        hint = (
            f" sdlearn loads .safetensors weights only (never pickled .bin files); if {part}/ "
            "has only .bin weights, convert it once with the owning library: "
            "StableDiffusionPipeline.from_pretrained(folder)"
            ".save_pretrained(folder, safe_serialization=True)."
        )
    return ModelLoadError(
        f"Could not load the {part} from the local folder {folder}.\nReason: {_summary(err)}\n"
        f"Expected {folder / part} to hold a diffusers/transformers {part} (config and weights).{hint}"
    )


def _classify(name: str) -> tuple[str, Path | str]:
    """``("replica"|"bundled"|"folder"|"hub", value)`` for a resolved model name."""
    if name in (SD15_REPLICA, SD15_REPLICA_META):
        return "replica", name
    if name == BUNDLED:
        return "bundled", BUNDLED_MODEL_DIR
    path = Path(name).expanduser()
    if name and path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{name!r} is a file; expected a model folder (with model_index.json) or a model name."
            )
        return "folder", path
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") >= 2
    if looks_like_path:
        raise ModelLoadError(
            f"model folder {name!r} does not exist (resolved to {path.resolve()}). Check the path, "
            f"or use one of the names {', '.join(KNOWN_MODEL_NAMES)}."
        )
    if _HUB_ID_RE.fullmatch(name):
        return "hub", name
    raise ModelLoadError(
        f"unknown model {name!r}. Accepted: one of {', '.join(repr(n) for n in KNOWN_MODEL_NAMES)}; "
        "a Hugging Face Hub id of a diffusers-format SD 1.x model shaped 'org/name' "
        f"(e.g. {KNOWN_SD1_MIRRORS[0]!r}); or the path of a local model folder. "
        f"Set it with load(name) or the environment variable {MODEL_ENV_VAR}."
    )


def load(
    model: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pipeline: bool = False,
) -> SDComponents:
    """Load the five Stable Diffusion parts named by ``model`` (see the module docstring).

    ``device``/``dtype`` default to ``sdlearn.device.resolve()`` (float16 on CUDA, float32
    elsewhere). ``pipeline=True`` also builds ``components.pipeline``. Weights are read
    from ``.safetensors`` files only. Raises ``ModelLoadError`` saying what to do when the
    model cannot be found or read.
    """
    name = resolve_model_name(model)
    kind, value = _classify(name)
    if kind == "replica":
        if value == SD15_REPLICA_META:
            components = sd15_replica(meta=True, dtype=dtype or torch.float32)
        else:
            device, dtype = resolve(device, dtype)
            components = sd15_replica(device=device, dtype=dtype)
    else:
        device, dtype = resolve(device, dtype)
        if kind == "hub":
            repo_id = str(value)

            def fail(part: str, err: BaseException) -> ModelLoadError:
                return _hub_error(repo_id, f"while loading its {part}", err)

            # With no network, huggingface_hub retries for tens of seconds before it gives up. Look once,
            # quickly, and then read only the local cache.
            cache_only = _offline_mode() or not hub_reachable()
            try:
                with _quiet_loading():
                    index_path = huggingface_hub.hf_hub_download(
                        repo_id, "model_index.json", local_files_only=cache_only)
                    scheduler_path = huggingface_hub.hf_hub_download(
                        repo_id, "scheduler_config.json", subfolder="scheduler", local_files_only=cache_only
                    )
            except (
                Exception
            ) as err:  # offline, not cached, unknown id, gated, no network: all mean "not here"
                step = "while fetching model_index.json and the scheduler config"
                if cache_only and not _offline_mode():
                    step += (f", from the local cache only: {huggingface_hub.constants.ENDPOINT} cannot be reached "
                             "from this machine (no network?)")
                raise _hub_error(repo_id, step, err) from err
            _check_model_index(json.loads(Path(index_path).read_text(encoding="utf-8")), repo_id)
            scheduler_config = json.loads(Path(scheduler_path).read_text(encoding="utf-8"))
            parts = _load_parts(repo_id, scheduler_config, device=device, dtype=dtype, fail=fail,
                                local_files_only=cache_only)
        else:
            folder = Path(value)
            if kind == "bundled" and not folder.is_dir():
                raise ModelLoadError(
                    f"the bundled model folder {folder} does not exist. It ships with the package "
                    "and is built by the recipe (python -m sdlearn.recipe, about an hour on 2 CPU cores); "
                    "reinstall sdlearn, or run the recipe to create it. Meanwhile choose "
                    f"another model with {MODEL_ENV_VAR} or load(name): '{SD15_REPLICA}' (random "
                    "weights, offline), a local folder path, or an SD 1.x hub id."
                )
            scheduler_config = _check_folder(folder)

            def fail(part: str, err: BaseException) -> ModelLoadError:
                return _local_error(folder, part, err)

            parts = _load_parts(str(folder), scheduler_config, device=device, dtype=dtype, fail=fail)
        components = SDComponents(name=name, device=device, dtype=dtype, **parts)
    if pipeline:
        components.make_pipeline()
    return components
