"""Between pictures and tensors: PIL images and numpy arrays to and from ``[B, 3, H, W]`` in [-1, 1].

Stable Diffusion's VAE reads and writes RGB images as float tensors ``[B, 3, H, W]`` with
values in [-1, 1] (pixel value ``p`` in 0..255 becomes ``p / 127.5 - 1``), and its
encoder halves the size three times, so height and width must be multiples of 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from sdlearn._checks import check_int, is_int

# Decoders overshoot [-1, 1] a little; beyond this margin the input is not an image in [-1, 1].
OVERSHOOT_LIMIT = 1.5
_MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "RGBA": "RGB with alpha",
    "P": "palette",
    "CMYK": "CMYK",
}


def _check_multiple_of_8(height: int, width: int, what: str) -> None:
    bad = [f"{name} {size}" for name, size in (("height", height), ("width", width)) if size % 8]
    if bad:
        raise ValueError(
            f"{what} has {' and '.join(bad)}, which is not a multiple of 8 (size {width}x{height}). "
            "Stable Diffusion's VAE halves the size three times, so height and width must be "
            "multiples of 8. Fix: sdlearn.images.fit_to_multiple_of_8(img) or "
            "sdlearn.images.center_crop(img, 512)."
        )


def _pil_to_array(img: Image.Image, index: int | None = None) -> np.ndarray:
    what = "image" if index is None else f"image {index}"
    if img.mode != "RGB":
        kind = _MODE_NAMES.get(img.mode, "not RGB")
        raise ValueError(
            f"{what} has mode {img.mode!r} ({kind}); expected an RGB image (mode 'RGB'). "
            'Fix: convert it first with img.convert("RGB").'
        )
    return np.asarray(img, dtype=np.uint8)


def _array_to_unit(arr: np.ndarray) -> np.ndarray:
    """``arr`` [B, H, W, 3] uint8 or float in [0, 1] -> float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("float array contains NaN or infinity; expected finite values in [0, 1].")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            hint = " It looks like 0..255: divide by 255." if hi > 1.0 and hi <= 255.0 and lo >= 0.0 else ""
            hint += (
                " It looks like [-1, 1]: use (arr + 1) / 2." if lo < 0.0 and lo >= -1.0 and hi <= 1.0 else ""
            )
            raise ValueError(
                f"float array has values in [{lo:.3g}, {hi:.3g}]; expected values in [0, 1].{hint} "
                "Or pass uint8 pixels (0..255)."
            )
        return arr.astype(np.float32)
    raise ValueError(
        f"array has dtype {arr.dtype}; expected uint8 (0..255) or float in [0, 1]. "
        "Fix: arr.astype(np.uint8) for pixel values, or arr.astype(np.float32) / 255."
    )


def to_tensor(images: Image.Image | Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """Images -> ``[B, 3, H, W]`` float32 in [-1, 1], the VAE's input.

    ``images``: a PIL RGB image, a list of same-size PIL RGB images, or a numpy array
    ``[H, W, 3]`` / ``[B, H, W, 3]`` of uint8 (0..255) or float (0..1). H and W must be
    multiples of 8. Maps ``x`` in [0, 1] to ``2 x - 1``.
    """
    if isinstance(images, Image.Image):
        arr = _pil_to_array(images)[None]
    elif isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(
                f"array has shape {tuple(images.shape)}; expected [H, W, 3] or [B, H, W, 3] "
                "(channels last, as PIL and numpy store images)."
            )
        if arr.shape[-1] != 3:
            hint = ""
            if arr.shape[1] == 3:
                hint = " It looks channels-first: use arr.transpose(0, 2, 3, 1)."
            elif arr.shape[-1] == 4:
                hint = " It has an alpha channel: drop it with arr[..., :3]."
            elif arr.shape[-1] == 1:
                hint = " It is grayscale: repeat it with np.repeat(arr, 3, axis=-1)."
            raise ValueError(
                f"array has shape {tuple(images.shape)} with {arr.shape[-1]} channels in the last "
                f"axis; expected 3 (RGB), shape [B, H, W, 3].{hint}"
            )
    elif isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images; expected at least one PIL image.")
        arrays = []
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise TypeError(
                    f"image {i} is a {type(img).__name__}; a list must hold PIL images only. "
                    "Stack arrays with np.stack(...) and pass the array instead."
                )
            arrays.append(_pil_to_array(img, i))
        sizes = {a.shape[:2] for a in arrays}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h}" for h, w in (a.shape[:2] for a in arrays))
            raise ValueError(
                f"images have different sizes ({listed}); a batch needs one size. "
                "Fix: resize them all, e.g. [sdlearn.images.center_crop(img, 512) for img in images]."
            )
        arr = np.stack(arrays)
    else:
        raise TypeError(
            f"images is a {type(images).__name__}; expected a PIL image, a list of PIL images, "
            "or a numpy array [B, H, W, 3]."
        )
    _check_multiple_of_8(arr.shape[1], arr.shape[2], "image")
    unit = _array_to_unit(arr)
    tensor = torch.from_numpy(np.ascontiguousarray(unit)).permute(0, 3, 1, 2)  # [B, 3, H, W] in [0, 1]
    return (tensor * 2.0 - 1.0).contiguous()  # [B, 3, H, W] in [-1, 1]


class PixelRangeWarning(UserWarning):
    """An image tensor looks like it is in [0, 1] where [-1, 1] is expected."""


def warn_if_unit_range(tensor: torch.Tensor, *, where: str, stacklevel: int = 3) -> None:
    """Warn when every value of ``tensor`` is in [0, 1] and some are above 1/2 of that: pixels in [0, 1]
    (torchvision's ``ToTensor``, ``image / 255``) passed where SD's [-1, 1] is expected, which gives
    washed-out, too bright results with no error. A picture brighter than mid-grey everywhere is a
    legitimate [-1, 1] image that warns too; the message says so.
    """
    lo, hi = float(tensor.min()), float(tensor.max())
    if 0.0 <= lo and hi <= 1.0 and hi > 0.5 and lo < 0.5:
        import warnings

        warnings.warn(
            f"{where}: every value is in [0, 1] (min {lo:.3g}, max {hi:.3g}), but Stable Diffusion's images are in "
            "[-1, 1]. If these are [0, 1] pixels, map them with x * 2 - 1 (or use sdlearn.images.to_tensor). "
            "An image that is brighter than mid-grey everywhere is in [-1, 1] already: then ignore this.",
            PixelRangeWarning, stacklevel=stacklevel)


def _check_image_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Validate ``tensor`` [B, 3, H, W] or [3, H, W] in about [-1, 1]; return it batched, float32, on CPU."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"expected a torch.Tensor [B, 3, H, W] in [-1, 1], got {type(tensor).__name__}. "
            "For PIL images or arrays, use sdlearn.images.to_tensor first."
        )
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim == 4 and tensor.shape[0] == 0:
        raise ValueError(f"tensor has shape {tuple(tensor.shape)}: no images. Pass at least one, [B, 3, H, W] with "
                         "B >= 1.")
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        hint = ""
        if tensor.ndim == 4 and tensor.shape[1] == 4:
            hint = (" 4 channels: latents [B, 4, h, w] (decode them with the VAE first), or an RGBA image (drop "
                    "the alpha channel: tensor[:, :3]).")
        elif tensor.ndim == 4 and tensor.shape[-1] == 3:
            hint = " It looks channels-last: use tensor.permute(0, 3, 1, 2)."
        raise ValueError(
            f"tensor has shape {tuple(tensor.shape)}; expected an RGB image batch [B, 3, H, W] "
            f"or one image [3, H, W].{hint}"
        )
    tensor = tensor.detach().to("cpu", torch.float32)
    if torch.isnan(tensor).any():
        raise ValueError(
            "tensor contains NaN. A common cause is decoding with the SD VAE in float16, which "
            "overflows. Fix: decode in float32 (vae.to(torch.float32) and latents.float()), or "
            "use a float16-fixed VAE."
        )
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -OVERSHOOT_LIMIT or hi > OVERSHOOT_LIMIT:
        hint = " Did you pass pixels in [0, 255]? Use x / 127.5 - 1." if lo >= 0 and hi > 2 else ""
        hint += " Did you pass latents? Decode them with the VAE first." if lo < -OVERSHOOT_LIMIT else ""
        raise ValueError(
            f"tensor has values in [{lo:.3g}, {hi:.3g}]; expected an image in [-1, 1] "
            f"(a slight decoder overshoot up to +-{OVERSHOOT_LIMIT} is clamped).{hint}"
        )
    return tensor


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` [B, 3, H, W] or [3, H, W] in [-1, 1] -> uint8 array ``[B, H, W, 3]`` (0..255).

    Values are clamped to [-1, 1] first (decoders overshoot slightly), then mapped with
    ``round((x + 1) / 2 * 255)``, as diffusers' image processor does.
    """
    tensor = _check_image_tensor(tensor)
    warn_if_unit_range(tensor, where="images.to_numpy")
    unit = (tensor / 2 + 0.5).clamp(0, 1)  # [B, 3, H, W] in [0, 1]
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """Pixels as stored, uint8 ``[B, 3, H, W]`` in 0..255 -> float32 in [-1, 1], the range SD's VAE takes:
    ``x / 127.5 - 1`` (the inverse of :func:`to_numpy`'s mapping, up to its rounding)."""
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8:
        kind = images_uint8.dtype if isinstance(images_uint8, torch.Tensor) else type(images_uint8).__name__
        raise TypeError(f"expected a uint8 tensor [B, 3, H, W] in 0..255, got {kind}. A float image is already "
                        "in a model's range or needs to_tensor; PIL images and numpy arrays go through to_tensor.")
    return images_uint8.float() / 127.5 - 1


def as_picture(image, *, uint8: bool = False) -> np.ndarray:
    """One picture as an ``[H, W, 3]`` array, to show or to analyse: a tensor ``[3, H, W]`` or ``[1, 3, H, W]`` in
    [-1, 1] goes through :func:`to_numpy`; an array must be ``[H, W, 3]`` already (uint8, or float in [0, 1] to
    show). ``uint8=True`` accepts only uint8 pixels, as the toy world's judge reads them."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f"got a batch of {image.shape[0]} images; pass one, e.g. images[i].")
        return to_numpy(image)[0]
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or (uint8 and arr.dtype != np.uint8):
        want = "an [H, W, 3] uint8 array" if uint8 else "[H, W, 3] (uint8 or float in [0, 1])"
        raise ValueError(f"image must be {want} or a tensor [3, H, W] in [-1, 1], got shape {arr.shape} "
                         f"{arr.dtype}. From the pipeline's output_type='np' images use "
                         "np.round(images * 255).astype(np.uint8).")
    return arr


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """``tensor`` [B, 3, H, W] or [3, H, W] in [-1, 1] -> a list of B PIL RGB images."""
    return [Image.fromarray(arr) for arr in to_numpy(tensor)]


def fit_to_multiple_of_8(img: Image.Image, *, multiple: int = 8) -> Image.Image:
    """Resize ``img`` down so each side is the largest multiple of ``multiple`` not above it.

    Each side is floored separately, so the aspect ratio changes by less than
    ``multiple`` pixels per side. An image already of that shape is returned as a copy.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL image, got {type(img).__name__}.")
    check_int("multiple", multiple, expected="a positive int")
    width, height = img.size
    new_w, new_h = width // multiple * multiple, height // multiple * multiple
    if new_w == 0 or new_h == 0:
        raise ValueError(
            f"image is {width}x{height}, smaller than {multiple} pixels on a side; it cannot be "
            f"fitted to multiples of {multiple}. Use a larger image, or img.resize((512, 512))."
        )
    if (new_w, new_h) == (width, height):
        return img.copy()
    return img.resize((new_w, new_h), Image.Resampling.LANCZOS)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``img``, resized to ``size`` x ``size`` (a multiple of 8)."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL image, got {type(img).__name__}.")
    if not is_int(size, 1) or size % 8:
        raise ValueError(f"size must be a positive multiple of 8, got {size!r}. Use e.g. 512 (SD 1.x) or 64.")
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    if side == size:
        return square
    return square.resize((size, size), Image.Resampling.LANCZOS)


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0,
         per_image: bool = False) -> float | torch.Tensor:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE(a, b))``.

    ``a``, ``b``: same-shape tensors, images in [-1, 1] (so ``data_range`` = 2). The MSE is
    averaged over every element of the batch. Identical inputs give ``inf``. With
    ``per_image=True`` each image ``a[i]`` of ``[B, ...]`` inputs gets its own PSNR: a float64
    tensor ``[B]`` (average it for a mean PSNR, as :func:`sdlearn.evaluate.vae_psnr` does).
    The same as ``skimage.metrics.peak_signal_noise_ratio(b, a, data_range=data_range)``.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if a.shape != b.shape:
        raise ValueError(
            f"a has shape {tuple(a.shape)} but b has shape {tuple(b.shape)}; PSNR compares "
            "same-shape images. Resize or crop one to match the other."
        )
    a64 = a.detach().to("cpu", torch.float64)
    b64 = b.detach().to("cpu", torch.float64)
    if data_range == 2.0:
        for name, t in (("a", a64), ("b", b64)):
            if t.numel() and (t.min() < -OVERSHOOT_LIMIT or t.max() > OVERSHOOT_LIMIT):
                raise ValueError(
                    f"{name} has values in [{float(t.min()):.3g}, {float(t.max()):.3g}]; expected "
                    "images in [-1, 1]. For another value range pass data_range, e.g. "
                    "data_range=255.0 for 0..255 pixels."
                )
    if per_image:
        if a64.ndim < 2:
            raise ValueError(f"per_image=True needs a batch [B, ...] of images, got shape {tuple(a.shape)}.")
        mse_per_image = ((a64 - b64) ** 2).flatten(1).mean(1)                         # [B]
        if bool(mse_per_image.isnan().any()):
            raise ValueError("a or b contains NaN; PSNR needs finite values.")
        return 10.0 * torch.log10(data_range**2 / mse_per_image)                      # [B], inf where equal
    mse = float(((a64 - b64) ** 2).mean())
    if math.isnan(mse):
        raise ValueError("a or b contains NaN; PSNR needs finite values.")
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)
