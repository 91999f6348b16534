"""The RELION Class3D job template of one cluster, rendered at synth from assets/slurm.

The construct renders the sbatch script for the cluster's GPU count with validated parameters
(a bad parameter stops synth with one clear message) and publishes the default (the canonical
benchmark) as an SSM parameter, for whoever wants plain ``sbatch`` of it on the cluster; the
intake's drainer renders the same file per submission with the submitted parameters. ``write``
puts the text in a directory.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_ssm as ssm
from constructs import Construct

from ..jobs.class3d import DEFAULT_IMAGE, Mode, render
from ..jobs.parameters import Class3dParams
from ..settings import Settings


class Class3dJobTemplate(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        gpu_count: int,
        params: Class3dParams | None = None,
        image: str = DEFAULT_IMAGE,
        mode: Mode = "cloud",
    ) -> None:
        super().__init__(scope, construct_id)
        self.gpu_count = gpu_count
        self.params = params or Class3dParams()
        self.file_name = f"{settings.cluster_name(gpu_count)}-class3d.sbatch"
        """One file per cluster: several clusters' templates may share a directory."""
        self.script = render(settings, self.params, gpus=gpu_count, mode=mode, image=image)
        self.parameter = ssm.StringParameter(
            self,
            "Script",
            parameter_name=f"/relion-spot/{settings.cluster_name(gpu_count)}/class3d.sbatch",
            string_value=self.script,
            tier=ssm.ParameterTier.STANDARD,
            description="RELION Class3D job template (the benchmark's flags) for sbatch",
        )

    def write(self, directory: Path) -> Path:
        """Write the script (executable) into directory; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name
        path.write_text(self.script)
        path.chmod(0o755)
        return path
