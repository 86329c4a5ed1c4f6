import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from sdlearn import viz  # noqa: E402


def pil(color=(255, 0, 0)):
    return Image.new("RGB", (8, 8), color)


def test_image_grid_from_pil_list_with_titles():
    fig = viz.image_grid([pil(), pil((0, 255, 0)), pil((0, 0, 255))], titles=["r", "g", "b"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["r", "g", "b"]
    fig.canvas.draw()  # renders without a display


def test_image_grid_from_tensor_layout():
    x = torch.rand(7, 3, 8, 8) * 2 - 1
    fig = viz.image_grid(x, rows=2)
    assert len(fig.axes) == 7  # the empty 8th cell is removed
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
    fig = viz.image_grid(x)
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 6)
    fig = viz.image_grid([x[0], pil()], cols=1)
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 1)


def test_image_grid_errors():
    with pytest.raises(ValueError, match=r"got 1 titles for 2 images"):
        viz.image_grid([pil(), pil()], titles=["x"])
    with pytest.raises(ValueError, match=r"a 1x2 grid has 2 cells but there are 3 images"):
        viz.image_grid([pil()] * 3, rows=1, cols=2)
    with pytest.raises(ValueError, match=r"latents"):
        viz.image_grid(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"images\[0\] is a batch of 2 images"):
        viz.image_grid([torch.zeros(2, 3, 8, 8)])
    with pytest.raises(TypeError, match=r"images\[0\] is a str"):
        viz.image_grid(["cat.png"])
    with pytest.raises(ValueError, match=r"images is empty"):
        viz.image_grid([])


@pytest.mark.parametrize("shape", [(4, 8, 8), (1, 4, 8, 8)])
def test_show_latent_channels(shape):
    latents = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    fig = viz.show_latent_channels(latents, title="latents")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # 4 channels + colour bar
    images = [ax.get_images()[0] for ax in fig.axes[:4]]
    limits = {im.get_clim() for im in images}
    assert len(limits) == 1  # shared scale
    vmin, vmax = limits.pop()
    assert vmin == -vmax == pytest.approx(-float(latents.abs().max()))


def test_show_latent_channels_errors():
    with pytest.raises(ValueError, match=r"a batch of 2.*latents\[0\]"):
        viz.show_latent_channels(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"expected \[4, h, w\] or \[1, 4, h, w\]"):
        viz.show_latent_channels(torch.zeros(8, 8))
    with pytest.raises(TypeError, match=r"latents is a list"):
        viz.show_latent_channels([[0.0]])


def test_plot_curves():
    x = np.arange(5)
    fig = viz.plot_curves(
        x, {"train": [5, 4, 3, 2, 1], "val": np.ones(5)}, xlabel="step", ylabel="loss", logy=True
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "val"]


def test_plot_curves_errors():
    with pytest.raises(ValueError, match=r"ys\['val'\] has 3 values.*x has 5"):
        viz.plot_curves(range(5), {"train": range(5), "val": [1, 2, 3]}, xlabel="step", ylabel="loss")
    with pytest.raises(ValueError, match=r"values <= 0.*logy=False"):
        viz.plot_curves(range(3), {"y": [1, 0, 2]}, xlabel="x", ylabel="y", logy=True)
    with pytest.raises(ValueError, match=r"non-empty dict"):
        viz.plot_curves(range(3), {}, xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match=r"1-D"):
        viz.plot_curves(np.zeros((2, 2)), {"y": [1, 2]}, xlabel="x", ylabel="y")
