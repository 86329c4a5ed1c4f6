"""Every notebook, run in float16 on the CPU: a rehearsal of what a GPU runs.

On a CUDA GPU, ``sdlearn.device.resolve()`` picks float16, and every notebook takes its float16
branches: other tolerances, float16 text embeddings and latents, a float16 VAE whose decode is
upcast. CI has no GPU, and nbval runs the notebooks in float32 on the CPU, so without this those
branches would be code nobody has run (this rehearsal found three: an assert with float32's
tolerance in notebooks 05 and 08, and ``from_pipe`` turning notebook 06's model to float32).

A CPU runs float16 too, slowly, and with its own kernels: here each notebook is executed with
``resolve()`` answering (cpu, float16), and must run to the end with every assert it makes. What
the notebooks skip on a CPU: the one cell that branches on ``device.type == "cuda"`` (notebook
06's SD 1.5 replica at 512x512); its code is run below with stand-ins (tiny parts for the
replica, no-ops for CUDA's timers). What this cannot rehearse: a GPU's kernels and rounding,
and the real sizes. Only a GPU runs those.

A CPU has no fast float16 kernels for the two operations that are nearly all of the work:
PyTorch's float16 convolution on a CPU without AVX-512 FP16 falls back to a slow reference
kernel (measured: the bundled U-Net on a batch of 96, 0.55 s in float32, 6.0 s in float16,
70% of it in ``_slow_conv2d_forward``). So in the rehearsal ``F.conv2d`` and ``F.linear`` on
float16 tensors compute in float32 and round the result to float16, as a GPU's tensor cores
accumulate float16 products in float32. Their inputs, weights and results stay float16, and an
input whose dtype differs from its weights' still raises PyTorch's own error: the dtype mistakes
the rehearsal exists to catch are still caught (a test below checks it).
"""

import copy
import dataclasses
import re
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from sdlearn import models, sampling

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

FLOAT16_PRODUCTS_IN_FLOAT32 = """\
# Added by tests/test_notebooks_float16.py: float16 convolutions and matrix products accumulate in float32,
# as on a GPU (a CPU's float16 convolution is a slow reference kernel); tensors in and out stay float16
import torch.nn.functional

def _accumulating_in_float32(op):
    def run(input, weight, bias=None, *args, **kwargs):
        if (input.dtype == weight.dtype == torch.float16 and input.device.type == "cpu"
                and (bias is None or bias.dtype == torch.float16)):
            return op(input.float(), weight.float(), None if bias is None else bias.float(), *args, **kwargs).half()
        return op(input, weight, bias, *args, **kwargs)   # anything else, mismatched dtypes included, as PyTorch has it
    return run

torch.nn.functional.conv2d = _accumulating_in_float32(torch.nn.functional.conv2d)
torch.nn.functional.linear = _accumulating_in_float32(torch.nn.functional.linear)
"""

FLOAT16_ON_THE_CPU = """\
# Added by tests/test_notebooks_float16.py: resolve() answers as on a GPU, in float16, but on the CPU
import torch, sdlearn.device, sdlearn.models

def _float16_on_the_cpu(device=None, dtype=None):
    return torch.device("cpu"), torch.float16

sdlearn.device.resolve = sdlearn.models.resolve = _float16_on_the_cpu
""" + FLOAT16_PRODUCTS_IN_FLOAT32

IT_RAN_IN_FLOAT16 = """\
# Added by tests/test_notebooks_float16.py: the notebook did take the float16 path
assert dtype == torch.float16, f"the notebook ran in {dtype}, not float16: the rehearsal did not take"
"""


pytestmark = pytest.mark.slow


def test_every_notebook_is_rehearsed():
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_float16_as_a_learner_first_opens_it(path):
    """In float16, and with the solution cells taken out, as a learner meets the notebook before answering:
    it must run to the end, and each exercise's check must say that it has no answer yet. (nbval runs the
    solutions, in float32.)"""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "solution" not in c.metadata.get("tags", [])]
    asked = [c for c in nb.cells if c.cell_type == "code" and re.search(r"^check\(\"\d\d\.\d+\"", c.source, re.M)]
    nb.cells.insert(0, nbformat.v4.new_code_cell(FLOAT16_ON_THE_CPU))
    nb.cells.append(nbformat.v4.new_code_cell(IT_RAN_IN_FLOAT16))
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()           # raises CellExecutionError, with the cell and its traceback, if any cell fails
    assert asked, f"{path.name}: no exercise checks found"
    for cell in asked:
        printed = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        assert "no answer yet" in printed, f"{path.name}: without an answer the check said {printed!r}"


def float16_products_in_float32(monkeypatch):
    """The rehearsal's float16 convolutions and matrix products, in this process (undone after the test)."""
    monkeypatch.setattr(torch.nn.functional, "conv2d", torch.nn.functional.conv2d)   # restored afterwards
    monkeypatch.setattr(torch.nn.functional, "linear", torch.nn.functional.linear)
    exec(FLOAT16_PRODUCTS_IN_FLOAT32, {"torch": torch})  # noqa: S102 - the rehearsal's own code


def test_float16_products_in_float32_keep_float16_and_pytorchs_dtype_errors(monkeypatch):
    float16_products_in_float32(monkeypatch)
    F = torch.nn.functional
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=generator)
    conv_weight, conv_bias = torch.randn(4, 8, 3, 3, generator=generator), torch.randn(4, generator=generator)
    y = F.conv2d(x.half(), conv_weight.half(), conv_bias.half(), padding=1)
    assert y.dtype == torch.float16 and y.shape == (2, 4, 6, 6)
    exact = F.conv2d(x.half().double(), conv_weight.half().double(), conv_bias.half().double(), padding=1)
    torch.testing.assert_close(y.double(), exact, rtol=1e-3, atol=1e-3)        # float16's rounding of the exact sum
    linear_weight = torch.randn(5, 8, generator=generator)
    z = F.linear(x.half().movedim(1, -1), linear_weight.half())
    assert z.dtype == torch.float16
    torch.testing.assert_close(z.double(), F.linear(x.half().double().movedim(1, -1), linear_weight.half().double()),
                               rtol=1e-3, atol=1e-3)
    # The mistakes the rehearsal is there to find still fail as they do in PyTorch (and on a GPU)
    with pytest.raises(RuntimeError, match="dtype|type"):
        F.conv2d(x.half(), conv_weight, conv_bias, padding=1)
    with pytest.raises(RuntimeError, match="dtype|type"):
        F.linear(x.half().movedim(1, -1), linear_weight)
    with pytest.raises(RuntimeError, match="dtype|type"):
        torch.nn.Linear(8, 5).half()(x.movedim(1, -1))


def test_notebook_06s_cuda_only_cell_runs_with_stand_ins(tiny_components, monkeypatch, capsys):
    """Notebook 06, section 9: the one cell that runs only on CUDA (the loop on the SD 1.5 replica at 512x512
    in float16, against the pipeline, timed). Its code runs here as written, on the CPU in float16, with
    stand-ins for what needs a GPU: tiny random parts for the replica, and no-ops for CUDA's timers; 3 steps
    instead of 50, since float16 runs slowly on a CPU (50 took three minutes)."""
    nb = nbformat.read(ROOT / "notebooks" / "06_sampling_loop.ipynb", as_version=4)
    [cell] = [c for c in nb.cells if c.cell_type == "code" and 'if device.type == "cuda":' in c.source]
    assert cell.source.count('if device.type == "cuda":') == 1 and cell.source.count("replica.image_size, 50, ") == 1
    source = (cell.source.replace('if device.type == "cuda":', "if True:  # the rehearsal", 1)
              .replace("replica.image_size, 50, ", "replica.image_size, 3, ", 1))   # 3 steps: float16 is slow on a CPU
    half = {name: copy.deepcopy(getattr(tiny_components, name)).to(torch.float16)
            for name in ("unet", "vae", "text_encoder")}
    replica = dataclasses.replace(tiny_components, dtype=torch.float16, pipeline=None, **half)
    float16_products_in_float32(monkeypatch)                          # as in the notebooks' rehearsal above
    monkeypatch.setattr(models, "sd15_replica", lambda device, dtype: replica)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "a stand-in GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    namespace = dict(device=torch.device("cpu"), dtype=torch.float16, torch=torch, sampling=sampling, models=models,
                     generator=torch.Generator().manual_seed(0), PROMPT="a red circle on the left",
                     image_tol=dict(rtol=0, atol=3e-2))                   # notebook 06's float16 tolerance
    exec(compile(source, "notebook 06, section 9", "exec"), namespace)  # noqa: S102 - the notebook's own code
    out = capsys.readouterr().out
    side = replica.image_size
    assert f"SD 1.5 replica, {side}x{side}, 3 steps, float16, a stand-in GPU: hand " in out, out
    assert "images equal within atol 0.03" in out
