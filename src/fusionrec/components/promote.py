"""KFP component: promote the treatment's model repository to the serving location."""


from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from fusionrec.components.images import step_image


@dsl.component(base_image=step_image("promote"), install_kfp_package=False)
def promote(repository: Input[Model], ab_report: Input[Artifact], serving_location: str) -> str:
    """Install ``repository`` at ``serving_location`` with a ``PROMOTED`` manifest; returns the location.

    The pipeline runs this only when the A/B step said promote; the library checks the
    decision again and refuses otherwise, so a rejected model never replaces the control.
    """
    from pathlib import Path

    from fusionrec.promote import promote as promote_repository

    return str(promote_repository(Path(repository.path), Path(ab_report.path), Path(serving_location)))
