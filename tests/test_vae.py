import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from sdlearn import vae as sdvae

# The tiny test VAE downsamples by 2 (two stages), so 16x16 images give 8x8 latents.
SIZE = 16


@pytest.fixture(scope="module")
def vae(tiny_components):
    return tiny_components.vae


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1  # [2, 3, 16, 16] in [-1, 1]


def test_scale_factor_and_latent_shape(vae):
    assert sdvae.vae_scale_factor(vae) == 2
    assert sdvae.latent_shape(vae, 16, 32, batch_size=3) == (3, 4, 8, 16)
    with pytest.raises(ValueError, match=r"width 15.*not a multiple of 2"):
        sdvae.latent_shape(vae, 16, 15)


def test_encode_mode_is_scaled_posterior_mean(vae, images):
    latents = sdvae.encode(vae, images, sample=False)
    assert latents.shape == (2, 4, SIZE // 2, SIZE // 2)
    mean = vae.encode(images).latent_dist.mean
    torch.testing.assert_close(latents, mean * vae.config.scaling_factor)
    assert not latents.requires_grad


def test_encode_sample_matches_library_with_same_generator(vae, images):
    latents = sdvae.encode(vae, images, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, z * vae.config.scaling_factor)
    again = sdvae.encode(vae, images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(latents, again)


def test_decode_inverts_the_scaling_and_clamps(vae, images):
    latents = sdvae.encode(vae, images, sample=False)
    decoded = sdvae.decode(vae, latents, clamp=False)
    assert decoded.shape == images.shape
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor).sample
    torch.testing.assert_close(decoded, expected)
    clamped = sdvae.decode(vae, latents * 50)
    assert clamped.min() >= -1 and clamped.max() <= 1


def test_reparameterise_matches_diffusers_sample():
    g = torch.Generator().manual_seed(1)
    parameters = torch.randn(2, 8, 3, 3, generator=g)  # mean and logvar stacked, as the encoder outputs
    dist = DiagonalGaussianDistribution(parameters)
    expected = dist.sample(generator=torch.Generator().manual_seed(7))
    got = sdvae.reparameterise(dist.mean, dist.logvar, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)


def test_reparameterise_has_the_right_moments_and_gradients():
    mean = torch.full((1, 4, 64, 64), 2.0, requires_grad=True)
    logvar = torch.full((1, 4, 64, 64), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = sdvae.reparameterise(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None


def test_kl_matches_diffusers_and_is_zero_at_the_prior():
    parameters = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(2))
    dist = DiagonalGaussianDistribution(parameters)
    kl = sdvae.kl_divergence(dist.mean, dist.logvar)
    assert kl.shape == (3,) and (kl > 0).all()
    torch.testing.assert_close(kl, dist.kl())
    zeros = torch.zeros(2, 4, 4, 4)
    torch.testing.assert_close(sdvae.kl_divergence(zeros, zeros), torch.zeros(2))


def test_kl_of_one_gaussian_by_formula():
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2) for a single element
    mu, s = 0.7, 1.8
    expected = 0.5 * (mu**2 + s**2 - 1 - torch.log(torch.tensor(s**2)))
    got = sdvae.kl_divergence(torch.tensor([[mu]]), torch.log(torch.tensor([[s**2]])))
    torch.testing.assert_close(got, expected.reshape(1))


def test_encode_rejects_bad_images(vae, images):
    with pytest.raises(ValueError, match=r"4 channels.*expects 3.*latents.*or an RGBA image.*images\[:, :3\]"):
        sdvae.encode(vae, torch.zeros(1, 4, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"channels-last"):
        sdvae.encode(vae, torch.zeros(1, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match=r"width 15.*not a multiple of 2.*center_crop"):
        sdvae.encode(vae, torch.zeros(1, 3, SIZE, 15))
    with pytest.raises(ValueError, match=r"values in \[0, 255\]; expected \[-1, 1\].*x / 127.5 - 1"):
        sdvae.encode(vae, torch.linspace(0, 255, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"dtype torch.uint8.*127.5"):
        sdvae.encode(vae, torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images\[None\]"):
        sdvae.encode(vae, images[0])
    with pytest.raises(ValueError, match=r"NaN"):
        sdvae.encode(vae, torch.full((1, 3, SIZE, SIZE), float("nan")))
    with pytest.raises(TypeError, match=r"to_tensor"):
        sdvae.encode(vae, images.numpy())


def test_decode_rejects_bad_latents(vae, images):
    with pytest.raises(ValueError, match=r"look like images.*encode"):
        sdvae.decode(vae, images)
    with pytest.raises(ValueError, match=r"latents\[None\]"):
        sdvae.decode(vae, torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match=r"NaN"):
        sdvae.decode(vae, torch.full((1, 4, 8, 8), float("nan")))


def test_reparameterise_and_kl_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same posterior"):
        sdvae.reparameterise(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match=r"batch axis first"):
        sdvae.kl_divergence(torch.zeros(4), torch.zeros(4))


def test_fold_scaling_factor_keeps_scaled_latents_and_images_and_sets_sds_constant(vae, images):
    import copy

    folded = copy.deepcopy(vae)
    folded.register_to_config(scaling_factor=0.8)
    before = copy.deepcopy(folded)
    k = sdvae.fold_scaling_factor(folded, 0.18215)
    assert k == pytest.approx(0.8 / 0.18215) and folded.config.scaling_factor == 0.18215
    with torch.no_grad():
        raw_before, raw_after = before.encode(images).latent_dist, folded.encode(images).latent_dist
    torch.testing.assert_close(raw_after.mean, k * raw_before.mean, rtol=1e-5, atol=1e-6)  # raw latents k times larger
    torch.testing.assert_close(raw_after.std, k * raw_before.std, rtol=1e-5, atol=1e-6)
    scaled = sdvae.encode(before, images, sample=False)
    torch.testing.assert_close(sdvae.encode(folded, images, sample=False), scaled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sdvae.decode(folded, scaled), sdvae.decode(before, scaled), rtol=1e-5, atol=1e-5)
    # a sample with the same generator is k times the old sample too (the noise is scaled by sigma)
    torch.testing.assert_close(sdvae.encode(folded, images, generator=torch.Generator().manual_seed(1)),
                               sdvae.encode(before, images, generator=torch.Generator().manual_seed(1)),
                               rtol=1e-5, atol=1e-5)


def test_fold_scaling_factor_refuses_what_it_cannot_fold(vae):
    import copy

    with pytest.raises(ValueError, match="positive number"):
        sdvae.fold_scaling_factor(copy.deepcopy(vae), 0)
    no_quant = copy.deepcopy(vae)
    no_quant.quant_conv = None
    with pytest.raises(ValueError, match="no quant_conv"):
        sdvae.fold_scaling_factor(no_quant, 0.18215)


def test_images_in_zero_one_warn_that_sd_expects_minus_one_one(vae):
    from sdlearn.images import PixelRangeWarning

    unit = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))     # [0, 1]: too bright
    with pytest.warns(PixelRangeWarning, match=r"every value is in \[0, 1\].*x \* 2 - 1"):
        sdvae.encode(vae, unit, sample=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PixelRangeWarning)
        sdvae.encode(vae, unit * 2 - 1, sample=False)                                   # [-1, 1]: no warning
