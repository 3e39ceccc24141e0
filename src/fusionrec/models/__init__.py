"""Alignment, fusion, the sequential user model, baselines and training.

Example:
    >>> from fusionrec.models import load_model
    >>> model = load_model("artifacts/model")                         # doctest: +SKIP
    >>> idx, score = model.topk(histories, k=10)                      # doctest: +SKIP
    >>> module = model.serving_module(k=100)  # for torch.onnx.export  # doctest: +SKIP
"""

from fusionrec.models.recommender import (
    EXCLUDED,
    ModelSpec,
    PopularityRanker,
    Recommender,
    ServingModule,
    load_model,
    save_model,
)

__all__ = ["EXCLUDED", "ModelSpec", "PopularityRanker", "Recommender", "ServingModule", "load_model", "save_model"]
