"""The Kubeflow pipeline: DAG, compile, submit to a cluster, run locally with kfp.local."""

from fusionrec.pipelines.fusionrec_pipeline import compile_pipeline, fusionrec_pipeline, make_pipeline

__all__ = ["compile_pipeline", "fusionrec_pipeline", "make_pipeline"]
