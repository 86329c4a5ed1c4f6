import pytest
import torch

from sdlearn import device as dev


@pytest.fixture(autouse=True)
def no_device_override(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV_VAR, raising=False)


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.default_device() == torch.device("mps")
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.default_device() == torch.device("cpu")


def test_env_var_overrides_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cpu")
    assert dev.default_device() == torch.device("cpu")


def test_env_var_unknown_value(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=r"SDLEARN_DEVICE.*'tpu'.*Allowed values: cpu, cuda, cuda:N, mps"):
        dev.default_device()


def test_env_var_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(dev.DEVICE_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"CUDA is not available.*device='cpu'"):
        dev.default_device()


def test_default_dtype():
    assert dev.default_dtype("cuda") == torch.float16
    assert dev.default_dtype(torch.device("cuda:0")) == torch.float16
    assert dev.default_dtype("cpu") == torch.float32
    assert dev.default_dtype("mps") == torch.float32


def test_resolve_fills_defaults():
    device, dtype = dev.resolve()
    assert device == dev.default_device()
    assert dtype == dev.default_dtype(device)
    assert dev.resolve("cpu") == (torch.device("cpu"), torch.float32)
    assert dev.resolve("cpu", "float32") == (torch.device("cpu"), torch.float32)
    assert dev.resolve("cpu", torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)


def test_resolve_rejects_fp16_on_cpu():
    with pytest.raises(ValueError, match=r"float16 was requested on the CPU.*dtype=torch.float32"):
        dev.resolve("cpu", torch.float16)


def test_resolve_rejects_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"'cuda' was requested but CUDA is not available"):
        dev.resolve("cuda")


def test_resolve_rejects_bad_values():
    with pytest.raises(ValueError, match=r"device is 'gpu'.*Allowed values"):
        dev.resolve("gpu")
    with pytest.raises(ValueError, match=r"not a floating-point type"):
        dev.resolve("cpu", torch.int64)
    with pytest.raises(ValueError, match=r"dtype 'double16' is not understood"):
        dev.resolve("cpu", "double16")


def test_make_generator_is_seeded():
    a = torch.randn(3, generator=dev.make_generator(7))
    b = torch.randn(3, generator=dev.make_generator(7))
    c = torch.randn(3, generator=dev.make_generator(8))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert dev.make_generator(0).device == torch.device("cpu")


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_make_generator_rejects_out_of_range_seed(seed):
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        dev.make_generator(seed)


@pytest.mark.parametrize("seed", [1.5, "0", True])
def test_make_generator_rejects_non_int_seed(seed):
    with pytest.raises(TypeError, match=r"seed must be an int"):
        dev.make_generator(seed)


def test_environment_report_and_format():
    report = dev.environment_report()
    for key in ["python", "platform", "torch", "diffusers", "transformers", "accelerate", "device",
                "cuda available", "mps available"]:  # fmt: skip
        assert isinstance(report[key], str) and report[key]
    assert report["torch"] == torch.__version__
    assert ("gpu memory" in report) == torch.cuda.is_available()
    text = dev.format_environment_report({"a": "1", "long key": "2"})
    assert text == "a        : 1\nlong key : 2"
    lines = dev.format_environment_report().splitlines()
    assert len(lines) == len(report)
    assert len({line.index(" : ") for line in lines}) == 1  # aligned


def test_check_same_device_dtype_accepts_matching():
    dev.check_same_device_dtype(a=torch.zeros(2), b=torch.ones(3))
    dev.check_same_device_dtype()


def test_check_same_device_dtype_mixed_devices():
    with pytest.raises(
        ValueError, match=r"(?s)latents: device=cpu.*noise: device=meta.*\.to\(device, dtype\)"
    ):
        dev.check_same_device_dtype(latents=torch.zeros(2), noise=torch.zeros(2, device="meta"))


def test_check_same_device_dtype_mixed_dtypes():
    with pytest.raises(ValueError, match=r"(?s)dtype=torch.float32.*dtype=torch.float16.*latents.dtype"):
        dev.check_same_device_dtype(latents=torch.zeros(2), noise=torch.zeros(2, dtype=torch.float16))


def test_check_same_device_dtype_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"noise must be a torch.Tensor, got list"):
        dev.check_same_device_dtype(latents=torch.zeros(2), noise=[0.0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_make_generator_on_a_missing_gpu_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"'cuda' was requested but CUDA is not available.*device='cpu'"):
        dev.make_generator(0, device="cuda")


# --- noise: diffusers' randn_tensor, one rule for every draw ---------------------------------------


def test_draw_noise_is_randn_tensor():
    from diffusers.utils.torch_utils import randn_tensor

    for dtype in (torch.float32, torch.float64, torch.float16):
        mine = dev.draw_noise((2, 4, 3, 3), generator=dev.make_generator(5), dtype=dtype)
        library = randn_tensor((2, 4, 3, 3), generator=dev.make_generator(5), device=torch.device("cpu"), dtype=dtype)
        assert mine.dtype == dtype and torch.equal(mine, library)
    # a CPU generator draws on the CPU whatever the device; with no generator the draw is made on the device
    assert dev.draw_noise((2, 3), generator=dev.make_generator(0), device="meta").device.type == "meta"
    assert dev.draw_noise((2, 3), device="meta").device.type == "meta"


def test_draw_noise_refuses_what_is_not_a_generator():
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator.*torch.Generator\(\).manual_seed\(0\)"):
        dev.draw_noise((1,), generator=0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dev.draw_noise((1,), generator=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_draw_noise_says_what_to_do_for_a_generator_on_another_device():
    with pytest.raises(ValueError, match=r"generator lives on cuda.*Use a CPU generator"):
        dev.draw_noise((1,), generator=torch.Generator("cuda").manual_seed(0), device="cpu")


# --- the machine report ------------------------------------------------------------------------


def test_machine_lines():
    lines = dev.machine_lines()
    assert [line[:10] for line in lines] == ["machine : ", "versions: ", "GPU     : "]
    assert f"{torch.get_num_threads()}" in lines[0] and "logical CPUs" in lines[0]
    assert f"torch {torch.__version__}," in lines[1]
    assert ("CUDA" in lines[2] and "none" not in lines[2]) == torch.cuda.is_available()
    assert "torch threads" not in dev.machine_lines(torch_threads=False)[0]
