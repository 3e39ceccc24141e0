"""Submit the compiled pipeline to a KFP cluster with ``kfp.Client``."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from fusionrec.pipelines.fusionrec_pipeline import compile_pipeline
from fusionrec.pipelines.params import PipelineError


def _connection_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, OSError)


def submit(host: str, args: dict[str, Any], experiment: str, run_name: str | None = None,
           namespace: str | None = None, existing_token: str | None = None) -> dict[str, str]:
    """Compile the pipeline and create a run on the KFP at ``host``; returns run id and URL."""
    import kfp
    from kfp_server_api.exceptions import ApiException

    try:
        with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline(Path(tmp) / "fusionrec_pipeline.yaml")
            result = client.create_run_from_pipeline_package(str(package), arguments=args, run_name=run_name,
                                                             experiment_name=experiment, namespace=namespace)
    except _connection_errors() as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PipelineError(f"cannot reach KFP at {host}: {reason}") from None
    except ApiException as exc:
        raise PipelineError(f"KFP at {host} refused the request: HTTP {exc.status} {exc.reason}"
                            + (f": {str(exc.body)[:300]}" if exc.body else "")) from None
    run_id = result.run_id
    return {"run_id": run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run_id}"}
