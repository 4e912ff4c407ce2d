"""clad: CLaD (Planning with Grounded Foresight via Cross-Modal Latent Dynamics) on LIBERO.

`clad` is plain PyTorch/Python: model, data formats, LIBERO runtime and rollout logic.
The Ray layer that distributes them lives in the sibling package `pipelines`.
"""

__version__ = "0.1.0"
