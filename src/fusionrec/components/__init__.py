"""KFP v2 components: one per pipeline step, each a thin wrapper over the fusionrec library.

Every component is a Python component whose ``base_image`` is its step's image
(:mod:`fusionrec.components.images`) with ``install_kfp_package=False``: the image carries
fusionrec and kfp, and the body only imports the library and calls the step function.

Inside a running step KFP sets ``_KFP_RUNTIME=true`` and its ``kfp.dsl`` then has no
``component`` decorator: the component modules are not imported there (a step body only needs
``fusionrec.components._util``).
"""

import os

__all__ = ["ab_evaluate", "align", "encode", "encode_plan", "export_onnx", "ingest", "merge_embeddings",
           "promote", "train_baseline", "train_fusion"]

if os.environ.get("_KFP_RUNTIME", "false") != "true":
    from fusionrec.components.ab import ab_evaluate
    from fusionrec.components.align import align
    from fusionrec.components.encode import encode, encode_plan, merge_embeddings
    from fusionrec.components.export import export_onnx
    from fusionrec.components.ingest import ingest
    from fusionrec.components.promote import promote
    from fusionrec.components.train import train_baseline, train_fusion
