"""KFP component: ingest (data contract folder, or the built-in demo catalog -> dataset artifact)."""


from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from fusionrec.components.images import step_image

@dsl.component(base_image=step_image("ingest"), install_kfp_package=False)
def ingest(
    dataset_uri: str,
    dataset: Output[Dataset],
    stats: Output[Metrics],
    config: dict = {},
):
    """Validate a catalog + interaction log and write the dataset artifact (splits, cold items, rejects).

    ``dataset_uri`` is a folder in the data contract as the step's container sees it (a mounted
    volume on a cluster), or ``demo://[?n_items=..&n_users=..&events_per_user=..&seed=..]`` to
    generate the built-in demo catalog inside the step. ``config`` is the ``ingest`` section.
    """
    import tempfile
    from pathlib import Path
    from urllib.parse import parse_qsl, urlsplit

    from fusionrec.components._util import config as make_config, log_metrics
    from fusionrec.data.ingest import IngestConfig, run

    cfg = make_config(IngestConfig, config)
    if dataset_uri.startswith("demo://"):
        from fusionrec.data.demo import DemoConfig, generate

        demo_cfg = make_config(DemoConfig, dict(parse_qsl(urlsplit(dataset_uri).query)))
        source = generate(Path(tempfile.mkdtemp(prefix="fusionrec-demo-")) / "demo", demo_cfg)
    else:
        source = Path(dataset_uri.removeprefix("file://"))
    run(source, Path(dataset.path), cfg)
    dataset.metadata["source"] = dataset_uri
    log_metrics(stats, Path(dataset.path) / "stats.json")
