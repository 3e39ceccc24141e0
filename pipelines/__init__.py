"""The Kubeflow pipeline: DAG, compile, submit to a cluster, run locally with kfp.local."""
