"""fusionrec: a multimodal recommender driven by large pretrained encoders.

Item content (text, images, audio, tabular metadata) is encoded by pretrained encoders,
aligned into one space, fused, and joined with a causal Transformer over each user's
behaviour; the model is exported to ONNX, served on Triton and A/B-evaluated.

The library holds all the logic and imports neither KFP nor Triton: ``fusionrec.components``,
``fusionrec.pipelines`` and ``fusionrec.serving`` adapt it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusionrec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
