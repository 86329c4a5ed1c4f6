"""sdlearn.noise: the forward process, checked against diffusers' DDPMScheduler."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from sdlearn.noise import SCHEDULES, add_noise, betas_for, markov_chain, snr

SD = {"beta_start": 0.00085, "beta_end": 0.012}
DDPM = {"beta_start": 0.0001, "beta_end": 0.02}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("ends", [SD, DDPM], ids=["sd", "ddpm"])
@pytest.mark.parametrize("steps", [1000, 50])
def test_betas_equal_diffusers(schedule, ends, steps):
    ours = betas_for(schedule, steps, **ends)
    theirs = DDPMScheduler(beta_schedule=schedule, num_train_timesteps=steps, **ends).betas
    assert ours.dtype == torch.float32 and ours.shape == (steps,)
    assert torch.equal(ours, theirs)


def test_betas_defaults_are_stable_diffusions():
    assert torch.equal(betas_for("scaled_linear"), DDPMScheduler(beta_schedule="scaled_linear", **SD).betas)


def test_unknown_schedule_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown beta schedule 'cosine'") as err:
        betas_for("cosine")
    for name in SCHEDULES:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("kwargs", [{"num_train_timesteps": 0}, {"num_train_timesteps": 10.0},
                                    {"beta_start": 0.02, "beta_end": 0.01}, {"beta_start": 0.0},
                                    {"beta_end": 1.0}])
def test_bad_schedule_arguments(kwargs):
    with pytest.raises(ValueError):
        betas_for("linear", **kwargs)


@pytest.fixture(scope="module")
def scheduler():
    return DDPMScheduler(beta_schedule="scaled_linear", **SD)


@pytest.mark.parametrize("timesteps", [torch.tensor([0, 10, 500, 999]), torch.tensor([250]), torch.tensor(999), 7])
def test_add_noise_equals_scheduler(scheduler, timesteps):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    ours = add_noise(x0, noise, timesteps, scheduler.alphas_cumprod)
    t = timesteps if isinstance(timesteps, torch.Tensor) else torch.tensor([timesteps])
    torch.testing.assert_close(ours, scheduler.add_noise(x0, noise, t))


def test_add_noise_is_the_closed_form(scheduler):
    x0, noise = torch.ones(2, 3), torch.full((2, 3), 2.0)
    abar = scheduler.alphas_cumprod
    out = add_noise(x0, noise, torch.tensor([0, 999]), abar)
    torch.testing.assert_close(out[0], (abar[0].sqrt() + 2 * (1 - abar[0]).sqrt()).expand(3))
    torch.testing.assert_close(out[1], (abar[999].sqrt() + 2 * (1 - abar[999]).sqrt()).expand(3))


def test_add_noise_keeps_dtype(scheduler):
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    assert add_noise(x0, torch.ones_like(x0), 3, scheduler.alphas_cumprod).dtype == torch.float64


@pytest.mark.parametrize("timesteps", [-1, 1000, torch.tensor([0, 1000])])
def test_add_noise_rejects_out_of_range_timesteps(scheduler, timesteps):
    x0 = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 999\]"):
        add_noise(x0, x0, timesteps, scheduler.alphas_cumprod)


def test_add_noise_rejects_bad_input(scheduler):
    abar = scheduler.alphas_cumprod
    x0 = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        add_noise(x0, torch.zeros(2, 5), 0, abar)
    with pytest.raises(TypeError, match="integer"):
        add_noise(x0, x0, torch.tensor([1.0, 2.0]), abar)
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2"):
        add_noise(x0, x0, torch.tensor([1, 2, 3]), abar)
    with pytest.raises(ValueError, match="1-D"):
        add_noise(x0, x0, 0, abar[None])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_noise(x0, x0, 0, scheduler.betas * 100)


def test_markov_chain_first_step_is_one_gaussian_step(scheduler):
    x0 = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    out = markov_chain(x0, scheduler.betas, 0, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    b = scheduler.betas[0]
    torch.testing.assert_close(out, (1 - b).sqrt() * x0 + b.sqrt() * eps)


def test_markov_chain_draws_what_randn_tensor_draws(scheduler):
    from diffusers.utils.torch_utils import randn_tensor

    x0 = torch.zeros(2, 3, dtype=torch.float64)
    path = markov_chain(x0, scheduler.betas, 1, generator=torch.Generator().manual_seed(4), return_all=True)
    g = torch.Generator().manual_seed(4)
    eps = [randn_tensor((2, 3), generator=g, device=torch.device("cpu"), dtype=torch.float32) for _ in range(2)]
    b, x, states = scheduler.betas.float(), x0.float(), []
    for s in range(2):                              # DDPM eq. 2, one fresh eps per step
        x = (1 - b[s]) ** 0.5 * x + b[s] ** 0.5 * eps[s]
        states.append(x)
    torch.testing.assert_close(path, torch.stack(states).double(), rtol=0, atol=0)


def test_markov_chain_is_reproducible_and_returns_the_path(scheduler):
    x0 = torch.zeros(2, 3)
    path = markov_chain(x0, scheduler.betas, 9, generator=torch.Generator().manual_seed(0), return_all=True)
    last = markov_chain(x0, scheduler.betas, 9, generator=torch.Generator().manual_seed(0))
    assert path.shape == (10, 2, 3)
    torch.testing.assert_close(path[-1], last)


def test_markov_chain_matches_closed_form_statistics(scheduler):
    """Many chains: mean sqrt(abar_t) x0 and std sqrt(1 - abar_t), within 5 standard errors."""
    n, t = 4000, 300
    x0 = torch.tensor([-1.5, 0.0, 0.7, 2.0]).expand(n, 4)
    out = markov_chain(x0, scheduler.betas, t, generator=torch.Generator().manual_seed(0))
    abar = scheduler.alphas_cumprod[t]
    std = (1 - abar).sqrt()
    assert ((out.mean(0) - abar.sqrt() * x0[0]).abs() < 5 * std / math.sqrt(n)).all()
    assert ((out.std(0) - std).abs() < 5 * std / math.sqrt(2 * (n - 1))).all()


@pytest.mark.parametrize("t", [-1, 1000, 2.0, True])
def test_markov_chain_rejects_bad_t(scheduler, t):
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        markov_chain(torch.zeros(2), scheduler.betas, t)


def test_markov_chain_rejects_integer_x0(scheduler):
    with pytest.raises(TypeError, match="floating-point"):
        markov_chain(torch.zeros(2, dtype=torch.long), scheduler.betas, 3)


def test_snr(scheduler):
    abar = scheduler.alphas_cumprod
    ratio = snr(abar)
    torch.testing.assert_close(ratio, abar / (1 - abar))
    assert (ratio[1:] < ratio[:-1]).all(), "SNR falls as t grows"
    assert snr(torch.tensor([0.5])).item() == 1.0
    with pytest.raises(ValueError, match="did you pass betas"):
        snr(torch.tensor([1.5]))


def test_scaled_linear_is_linear_in_sqrt_beta():
    """beta_t = (sqrt(beta_start) + t / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2."""
    t = torch.arange(1000, dtype=torch.float64)
    by_hand = (0.00085**0.5 + t / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2
    torch.testing.assert_close(betas_for("scaled_linear").double(), by_hand, rtol=1e-5, atol=0)


def test_cosine_alphas_cumprod_is_the_squared_cosine():
    """abar_t = f(t + 1) / f(0) with f(u) = cos^2((u / T + s) / (1 + s) * pi / 2), up to the clipped last step."""
    T, s = 1000, 0.008

    def f(u):
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    abar = torch.cumprod(1 - betas_for("squaredcos_cap_v2", T).double(), dim=0)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(abar[:-1], expected[:-1], rtol=1e-5, atol=1e-8)
    assert betas_for("squaredcos_cap_v2", T)[-1].item() == pytest.approx(0.999), "the last beta is clipped"


def test_noise_variance_recursion_gives_one_minus_alphas_cumprod(scheduler):
    """Each step maps noise variance v to (1 - beta) v + beta; after t + 1 steps from 0 it is 1 - abar_t."""
    v, variances = torch.tensor(0.0, dtype=torch.float64), []
    for beta in scheduler.betas.double():
        v = (1 - beta) * v + beta
        variances.append(v)
    torch.testing.assert_close(torch.stack(variances), 1 - scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_numpy_integer_timesteps_are_accepted(scheduler):
    np = pytest.importorskip("numpy")
    x0 = torch.ones(1, 3)
    torch.testing.assert_close(add_noise(x0, x0, np.int64(500), scheduler.alphas_cumprod),
                               add_noise(x0, x0, 500, scheduler.alphas_cumprod))
    g = torch.Generator().manual_seed(0)
    assert markov_chain(x0, scheduler.betas, np.int64(3), generator=g).shape == (1, 3)


def test_add_noise_casts_noise_to_x0_dtype_and_rejects_integers(scheduler):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    assert add_noise(x0, torch.ones(2, 3), 10, scheduler.alphas_cumprod).dtype == torch.float64
    with pytest.raises(TypeError, match="floating-point"):
        add_noise(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), 10, scheduler.alphas_cumprod)
