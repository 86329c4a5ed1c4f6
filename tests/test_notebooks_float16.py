"""Every notebook, run in float16 on the CPU: a rehearsal of what a GPU runs.

On a CUDA GPU, ``sdlearn.device.resolve()`` picks float16, and every notebook takes its float16
branches: other tolerances, float16 text embeddings and latents, a float16 VAE whose decode is
upcast. CI has no GPU, and nbval runs the notebooks in float32 on the CPU, so without this those
branches would be code nobody has run (this rehearsal found three: an assert with float32's
tolerance in notebooks 05 and 08, and ``from_pipe`` turning notebook 06's model to float32).

A CPU runs float16 too, slowly, and with its own kernels: here each notebook is executed with
``resolve()`` answering (cpu, float16), and must run to the end with every assert it makes. What
this cannot rehearse: the cells that branch on ``device.type == "cuda"`` (the SD 1.5 replica at
512x512, CUDA timers and memory), and a GPU's own rounding. Only a GPU runs those.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

FLOAT16_ON_THE_CPU = """\
# Added by tests/test_notebooks_float16.py: resolve() answers as on a GPU, in float16, but on the CPU
import torch, sdlearn.device, sdlearn.models

def _float16_on_the_cpu(device=None, dtype=None):
    return torch.device("cpu"), torch.float16

sdlearn.device.resolve = sdlearn.models.resolve = _float16_on_the_cpu
"""

IT_RAN_IN_FLOAT16 = """\
# Added by tests/test_notebooks_float16.py: the notebook did take the float16 path
assert dtype == torch.float16, f"the notebook ran in {dtype}, not float16: the rehearsal did not take"
"""


def test_every_notebook_is_rehearsed():
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_float16(path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(FLOAT16_ON_THE_CPU))
    nb.cells.append(nbformat.v4.new_code_cell(IT_RAN_IN_FLOAT16))
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()           # raises CellExecutionError, with the cell and its traceback, if any cell fails
