"""Where tensors live and in which number format: device, dtype, seeded generators and the noise they draw.

Every notebook starts with the same three choices: which device (a CUDA GPU, an Apple
GPU through MPS, or the CPU), which floating-point type (float16 halves memory on a GPU;
on a CPU it is slow or unsupported, so float32 there), and which random seed. This module
makes those choices in one place, and explains what went wrong when they clash.

The environment variable ``SDLEARN_DEVICE`` (``cpu``, ``cuda``, ``cuda:N`` or ``mps``)
overrides the automatic choice, e.g. ``SDLEARN_DEVICE=cpu`` on a machine with a GPU.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import torch
from diffusers.utils.torch_utils import randn_tensor

from sdlearn._checks import is_int

DEVICE_ENV_VAR = "SDLEARN_DEVICE"
ALLOWED_DEVICES = ("cpu", "cuda", "cuda:N", "mps")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _parse_device(device: str | torch.device, *, source: str) -> torch.device:
    """``device`` as a ``torch.device``; ``source`` names where the value came from, for errors."""
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise TypeError(
            f"{source} must be a str or torch.device, got {type(device).__name__}. "
            f"Pass one of {', '.join(ALLOWED_DEVICES)}, e.g. device='cpu'."
        )
    if not _DEVICE_RE.match(text):
        raise ValueError(
            f"{source} is {device!r}, which is not a device sdlearn knows. "
            f"Allowed values: {', '.join(ALLOWED_DEVICES)} (N a GPU index, e.g. cuda:0)."
        )
    return torch.device(text)


def _check_available(device: torch.device) -> None:
    """Raise a ``RuntimeError`` saying how to fix it when ``device`` cannot be used here."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}). "
                "Use device='cpu' (or unset SDLEARN_DEVICE), or install a CUDA build of PyTorch "
                "on a machine with an NVIDIA GPU."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(device)!r} was requested but only {torch.cuda.device_count()} "
                f"CUDA device(s) exist (cuda:0 ... cuda:{torch.cuda.device_count() - 1}). "
                "Pick an existing index, or use device='cuda'."
            )
    elif device.type == "mps" and not _mps_available():
        raise RuntimeError(
            "device 'mps' was requested but Apple's MPS backend is not available here "
            "(it needs an Apple-silicon Mac and a PyTorch build with MPS). Use device='cpu'."
        )


def default_device() -> torch.device:
    """The best device here: CUDA, then MPS, then CPU; ``SDLEARN_DEVICE`` overrides.

    Raises ``ValueError`` for an unknown ``SDLEARN_DEVICE`` value and ``RuntimeError`` when
    it names a device this machine does not have.
    """
    override = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if override:
        device = _parse_device(override, source=f"environment variable {DEVICE_ENV_VAR}")
        _check_available(device)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: str | torch.device) -> torch.dtype:
    """``torch.float16`` on CUDA (half the memory, fast tensor cores), ``torch.float32`` elsewhere."""
    device = _parse_device(device, source="device")
    return torch.float16 if device.type == "cuda" else torch.float32


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(
                f"dtype {dtype} is not a floating-point type; model weights need one. "
                "Use torch.float32 (CPU or GPU) or torch.float16 (GPU)."
            )
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")]
    raise ValueError(
        f"dtype {dtype!r} is not understood. Pass a torch dtype such as torch.float32 or "
        "torch.float16 (or its name, 'float32' / 'float16' / 'bfloat16')."
    )


def resolve(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Fill in the default device and dtype, and check the pair can work.

    Raises ``ValueError`` for float16 on the CPU and ``RuntimeError`` for a device this
    machine does not have. Returns ``(device, dtype)``.
    """
    device = default_device() if device is None else _parse_device(device, source="device")
    _check_available(device)
    dtype = default_dtype(device) if dtype is None else _parse_dtype(dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError(
            "dtype torch.float16 was requested on the CPU. Half precision on a CPU is slow and "
            "many operations (e.g. some convolutions and norms) are not implemented for it. "
            "Use dtype=torch.float32 on the CPU, or device='cuda' for float16."
        )
    return device, dtype


def make_generator(seed: int, *, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (an int in [0, 2**64)).

    A CPU generator (the default) works for every device: :func:`draw_noise` draws on the generator's
    device and moves the noise, as diffusers' ``randn_tensor`` does. Raises ``RuntimeError`` saying what to
    do when ``device`` is not on this machine (torch's own message is about how it was built).
    """
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}. Pass e.g. seed=0.")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}. Pass a non-negative int, e.g. seed=0.")
    device = _parse_device(device, source="device")
    _check_available(device)
    return torch.Generator(device=device).manual_seed(seed)


def check_generator(generator) -> None:
    """Raise a ``TypeError`` that says how to make one unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f" For a seed, make one: torch.Generator().manual_seed({generator!r})." if is_int(generator) else ""
        raise TypeError(f"generator must be a torch.Generator (or None), got {type(generator).__name__} "
                        f"{generator!r:.40}.{hint}")


def draw_noise(shape, *, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """``eps ~ N(0, I)`` of ``shape`` on ``device``, drawn as diffusers' pipelines draw it.

    The package's one way to draw noise (the sampling loop's starting latents, the VAE's
    reparameterisation, the forward process, the pipeline trace): diffusers' ``randn_tensor``, so the
    same generator gives the same numbers as ``StableDiffusionPipeline``. A CPU generator draws on the
    CPU and the noise is moved to ``device`` (the same numbers on every device); a generator on
    ``device`` draws there; with no generator the noise is drawn on ``device``. Raises ``ValueError``
    saying what to do for a generator on another accelerator, ``TypeError`` for something that is not
    a generator.
    """
    check_generator(generator)
    device = torch.device(device)
    if generator is not None and generator.device.type not in ("cpu", device.type):
        raise ValueError(
            f"the generator lives on {generator.device} but the noise is wanted on {device}. Use a CPU "
            "generator (sdlearn.device.make_generator(seed)), which works for every device, or one on "
            f"{device.type}."
        )
    return randn_tensor(tuple(int(s) for s in shape), generator=generator, device=device, dtype=dtype)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    """Versions and hardware as strings: what to paste into a bug report."""
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "cuda available": str(torch.cuda.is_available()),
        "mps available": str(_mps_available()),
    }
    try:
        report["device"] = str(default_device())
    except (ValueError, RuntimeError) as err:
        report["device"] = f"error: {err}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = props.name
        report["gpu memory"] = f"{props.total_memory / 2**30:.1f} GiB"
    return report


def _cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_lines(*, torch_threads: bool = True) -> list[str]:
    """The machine a measurement ran on, in three lines for a benchmark's report.

    ``machine : <platform>, <CPU>, <n> logical CPUs[, torch threads <n>]``, ``versions: python ..., torch
    ..., diffusers ..., transformers ...`` and ``GPU     : <name>, <memory>, CUDA <version>, cuDNN <version>``
    (or ``none (CUDA not available)``); the versions and the GPU come from :func:`environment_report`.
    ``torch_threads``: report this process's ``torch.get_num_threads()`` (leave it out when the
    measurement runs in other processes).
    """
    report = environment_report()
    machine = f"machine : {report['platform']}, {_cpu_name()}, {os.cpu_count()} logical CPUs"
    if torch_threads:
        machine += f", torch threads {torch.get_num_threads()}"
    lines = [machine, f"versions: python {report['python']}, torch {report['torch']}, diffusers "
                      f"{report['diffusers']}, transformers {report['transformers']}"]
    if "gpu" in report:
        lines.append(f"GPU     : {report['gpu']}, {report['gpu memory']}, CUDA {torch.version.cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}")
    else:
        lines.append("GPU     : none (CUDA not available)")
    return lines


def format_environment_report(report: dict[str, str] | None = None) -> str:
    """``report`` (default: ``environment_report()``) as aligned ``key : value`` lines."""
    report = environment_report() if report is None else report
    width = max((len(key) for key in report), default=0)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in report.items())


def check_same_device_dtype(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless all keyword ``tensors`` share one device and one dtype.

    Pass the floating-point tensors that meet in one operation, by name:
    ``check_same_device_dtype(latents=latents, noise=noise)``.
    """
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    pairs = {(t.device, t.dtype) for t in tensors.values()}
    if len(pairs) <= 1:
        return
    lines = "\n".join(f"  {name}: device={t.device}, dtype={t.dtype}" for name, t in tensors.items())
    first = next(iter(tensors))
    raise ValueError(
        "tensors are on different devices or have different dtypes:\n"
        f"{lines}\n"
        "Expected one device and one dtype for all of them. Fix: move them together with "
        f"`.to(device, dtype)`, e.g. `x = x.to({first}.device, {first}.dtype)`."
    )
