import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdlearn import images


def rgb(width=16, height=8, color=(255, 0, 0)):
    return Image.new("RGB", (width, height), color)


def test_to_tensor_pil_range_and_shape():
    x = images.to_tensor(rgb(16, 8, (255, 0, 128)))
    assert x.shape == (1, 3, 8, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]))


def test_to_tensor_list_and_arrays_agree():
    pils = [rgb(color=(0, 0, 0)), rgb(color=(255, 255, 255))]
    from_list = images.to_tensor(pils)
    arr = np.stack([np.asarray(p) for p in pils])  # [2, 8, 16, 3] uint8
    assert from_list.shape == (2, 3, 8, 16)
    torch.testing.assert_close(images.to_tensor(arr), from_list)
    torch.testing.assert_close(images.to_tensor(arr.astype(np.float32) / 255), from_list)
    torch.testing.assert_close(images.to_tensor(arr[1]), from_list[1:])
    assert from_list.min() == -1 and from_list.max() == 1


def test_to_tensor_rejects_grayscale_and_rgba():
    with pytest.raises(ValueError, match=r"mode 'L' \(grayscale\).*img\.convert\(\"RGB\"\)"):
        images.to_tensor(Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match=r"image 1 has mode 'RGBA'.*img\.convert\(\"RGB\"\)"):
        images.to_tensor([rgb(8, 8), Image.new("RGBA", (8, 8))])


def test_to_tensor_rejects_size_not_multiple_of_8():
    with pytest.raises(ValueError, match=r"width 13.*not a multiple of 8.*fit_to_multiple_of_8.*center_crop"):
        images.to_tensor(rgb(13, 8))
    with pytest.raises(ValueError, match=r"height 10 and width 12"):
        images.to_tensor(np.zeros((10, 12, 3), np.uint8))


def test_to_tensor_rejects_mixed_sizes():
    with pytest.raises(ValueError, match=r"different sizes \(16x8, 8x8\).*center_crop"):
        images.to_tensor([rgb(16, 8), rgb(8, 8)])


def test_to_tensor_rejects_float_out_of_range():
    with pytest.raises(ValueError, match=r"values in \[0, 200\]; expected values in \[0, 1\].*divide by 255"):
        images.to_tensor(np.full((8, 8, 3), 200.0, dtype=np.float32) * np.linspace(0, 1, 8)[:, None, None])
    with pytest.raises(ValueError, match=r"\[-1, 1\]: use \(arr \+ 1\) / 2"):
        images.to_tensor(np.full((8, 8, 3), -0.5, dtype=np.float32))


def test_to_tensor_rejects_wrong_channels_and_types():
    with pytest.raises(ValueError, match=r"4 channels.*expected 3.*arr\[\.\.\., :3\]"):
        images.to_tensor(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"channels-first.*transpose"):
        images.to_tensor(np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expected \[H, W, 3\] or \[B, H, W, 3\]"):
        images.to_tensor(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"dtype int64; expected uint8"):
        images.to_tensor(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(ValueError, match=r"empty list"):
        images.to_tensor([])
    with pytest.raises(TypeError, match=r"expected a PIL image, a list of PIL images, or a numpy array"):
        images.to_tensor("cat.png")


def test_round_trip_pil_tensor_pil():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(2, 8, 16, 3), dtype=np.uint8)
    x = images.to_tensor(arr)
    np.testing.assert_array_equal(images.to_numpy(x), arr)
    pils = images.to_pil(x)
    assert len(pils) == 2 and pils[0].size == (16, 8) and pils[0].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pils[1]), arr[1])
    assert len(images.to_pil(x[0])) == 1  # [3, H, W]


def test_to_pil_clamps_small_overshoot():
    x = torch.full((3, 8, 8), 1.2)
    x[0] = -1.3
    out = images.to_numpy(x)
    assert out.dtype == np.uint8 and out.shape == (1, 8, 8, 3)
    assert out[0, 0, 0].tolist() == [0, 255, 255]


def test_to_pil_rejects_wrong_range():
    with pytest.raises(
        ValueError, match=r"values in \[0, 255\].*\[-1, 1\].*Did you pass pixels in \[0, 255\]"
    ):
        images.to_pil(torch.linspace(0, 255, 3 * 8 * 8).reshape(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"Did you pass latents"):
        images.to_pil(torch.full((1, 3, 8, 8), -4.0))


def test_to_pil_rejects_nan_with_fp16_vae_hint():
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*float16.*decode in float32"):
        images.to_pil(x)


def test_to_pil_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(1, 4, 8, 8\).*latents.*decode them with the VAE"):
        images.to_pil(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        images.to_numpy(torch.zeros(1, 8, 8, 3))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor"):
        images.to_pil(np.zeros((3, 8, 8)))


def test_fit_to_multiple_of_8():
    out = images.fit_to_multiple_of_8(rgb(517, 389))
    assert out.size == (512, 384)
    assert images.fit_to_multiple_of_8(rgb(30, 21), multiple=10).size == (30, 20)
    same = rgb(16, 8)
    assert images.fit_to_multiple_of_8(same).size == (16, 8)
    with pytest.raises(ValueError, match=r"smaller than 8 pixels"):
        images.fit_to_multiple_of_8(rgb(5, 16))
    with pytest.raises(ValueError, match=r"multiple must be a positive int"):
        images.fit_to_multiple_of_8(same, multiple=0)


def test_center_crop_takes_the_middle():
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))  # blue middle square
    out = images.center_crop(img, 16)
    assert out.size == (16, 16)
    assert np.asarray(out)[..., 2].min() == 255 and np.asarray(out)[..., 0].max() == 0
    with pytest.raises(ValueError, match=r"size must be a positive multiple of 8, got 20"):
        images.center_crop(img, 20)


def test_psnr_matches_hand_computed_value():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)
    # MSE = 0.01; data range 2 (images in [-1, 1]): 10 log10(4 / 0.01) = 10 log10(400) = 26.0206 dB
    assert images.psnr(a, b) == pytest.approx(26.0206, abs=1e-4)
    assert images.psnr(a, b) == pytest.approx(10 * math.log10(2.0**2 / 0.01))
    assert images.psnr(a, a) == math.inf
    # pixels 0 vs 25.5 in 0..255: MSE 650.25, 10 log10(255^2 / 650.25) = 10 log10(100) = 20 dB
    assert images.psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(20.0)


def test_psnr_equals_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1                            # [B, 3, H, W] in [-1, 1]
    b = (a + 0.1 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)
    expected = peak_signal_noise_ratio(a.double().numpy(), b.double().numpy(), data_range=2.0)
    assert images.psnr(a, b) == pytest.approx(expected, rel=1e-12)
    per_image = images.psnr(a, b, per_image=True)                                        # [B]
    assert per_image.shape == (2,)
    for i in range(2):
        assert float(per_image[i]) == pytest.approx(
            peak_signal_noise_ratio(a[i].double().numpy(), b[i].double().numpy(), data_range=2.0), rel=1e-12)
        assert float(per_image[i]) == pytest.approx(images.psnr(a[i:i + 1], b[i:i + 1]), rel=1e-12)


def test_psnr_errors():
    with pytest.raises(ValueError, match=r"a has shape \(1, 3, 8, 8\) but b has shape \(1, 3, 8, 16\)"):
        images.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 16))
    with pytest.raises(ValueError, match=r"b has values in \[0, 255\].*data_range=255.0"):
        images.psnr(torch.zeros(3), torch.tensor([0.0, 1.0, 255.0]))


def test_to_numpy_warns_about_a_tensor_in_zero_one():
    from sdlearn.images import PixelRangeWarning, to_numpy

    with pytest.warns(PixelRangeWarning, match=r"images.to_numpy: every value is in \[0, 1\]"):
        to_numpy(torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"or an RGBA image \(drop the alpha channel"):
        to_numpy(torch.zeros(1, 4, 8, 8))


def test_to_model_range_is_the_inverse_of_to_numpy():
    pixels = torch.tensor([0, 64, 128, 191, 255], dtype=torch.uint8).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    x = images.to_model_range(pixels)                                       # [1, 3, 1, 5] float32
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert np.array_equal(images.to_numpy(x)[0].transpose(2, 0, 1), pixels[0].numpy())   # back to the same pixels
    with pytest.raises(TypeError, match="expected a uint8 tensor .* got torch.float32"):
        images.to_model_range(x)
    with pytest.raises(TypeError, match="got ndarray"):
        images.to_model_range(pixels.numpy())


def test_as_picture_takes_one_tensor_or_an_hwc_array():
    tensor = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    arr = images.as_picture(tensor)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8
    assert np.array_equal(images.as_picture(tensor[None]), arr)
    assert images.as_picture(arr, uint8=True) is not None and images.as_picture(arr / 255.0).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="a batch of 2 images; pass one"):
        images.as_picture(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"image must be an \[H, W, 3\] uint8 array .* got shape \(8, 8, 3\) float64"):
        images.as_picture(arr / 255.0, uint8=True)
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        images.as_picture(arr.transpose(2, 0, 1))


def test_an_empty_batch_is_refused_with_a_message():
    with pytest.raises(ValueError, match=r"shape \(0, 3, 8, 8\): no images"):
        images.to_numpy(torch.zeros(0, 3, 8, 8))
