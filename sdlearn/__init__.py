"""sdlearn: the helper package of a tested, runnable deep dive into Stable Diffusion.

The notebooks in ``notebooks/`` teach each idea in a few visible lines, then check them
against this package or against diffusers and transformers. Modules are named after
what a learner meets:

- ``models``: load the bundled teaching model, real SD 1.x weights, or an SD 1.5 replica
- ``device``: device, dtype, seeded generators, an environment report
- ``images``: images <-> tensors in [-1, 1], with checks that explain bad input
- ``viz``: image grids, latent channels, curves
- ``world``: the toy world the bundled model was trained on, and a pixel-level judge
- ``tokenizer``: the word-level CLIP tokenizer of the bundled model
- ``train``, ``recipe``, ``evaluate``: how the bundled model is trained and measured
"""

__version__ = "0.1.0"
