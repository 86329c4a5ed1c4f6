"""sdlearn: the helper package of a tested, runnable deep dive into Stable Diffusion.

The notebooks in ``notebooks/`` teach each idea in a few visible lines, then check them
against this package or against diffusers and transformers. Modules are named after
what a learner meets:

- ``models``: load the bundled teaching model, real SD 1.x weights, or an SD 1.5 replica
- ``device``: device, dtype, seeded generators and the noise they draw (diffusers' ``randn_tensor``), the machine report
- ``images``: images <-> tensors in [-1, 1], with checks that explain bad input
- ``viz``: image grids, latent channels, curves, the loss curve redrawn while training
- ``anatomy``: the pipeline's anatomy: its three parts, their shapes, parameters and FLOPs (notebook 01)
- ``vae``: encode, decode, the reparameterisation trick and the KL term (notebook 02)
- ``noise``: beta schedules, the forward process step by step and in one jump (notebook 03)
- ``text``: tokens and the CLIP text encoder by hand, CLIP similarities (notebook 04)
- ``unet``: the U-Net's stages, timestep embedding, cross-attention, guidance (notebook 05)
- ``sampling``: the sampling loop and a DDIM step written out, img2img by hand (notebook 06)
- ``attention``: cross- and self-attention maps captured with attention processors (notebook 07)
- ``latents``: the latent over the denoising steps, spherical interpolation (notebook 08)
- ``world``: the toy world the bundled model was trained on, and a pixel-level judge
- ``tokenizer``: the word-level CLIP tokenizer of the bundled model
- ``train``, ``recipe``, ``evaluate``: how the bundled model is trained and measured (notebook 09); ``evaluate``
  also measures how well words localise in the attention maps (notebook 07)
- ``exercises``: the checks of the notebooks' exercises
"""

import logging as _logging

__version__ = "0.1.0"


class _NoTorchvisionNotice(_logging.Filter):
    """Drop transformers' notice that CLIP's and SigLIP's image processors fall back to their PIL versions
    when torchvision is not installed (printed on every import of the pipelines). The course needs only
    the PIL versions, which compute the same pixels; every other message from transformers is kept."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
