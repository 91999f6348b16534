"""The RELION Class3D job template of one cluster, rendered at synth from assets/slurm.

The construct renders the sbatch script for the cluster's GPU count with validated parameters
(a bad parameter stops synth with one clear message) and holds the text; ``write`` puts it in a
directory (e.g. beside the stack's outputs) for the controller image or the CLI to pick up.
"""

from __future__ import annotations

from pathlib import Path

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

    def write(self, directory: Path) -> Path:
        """Write the script (executable) into directory; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name
        path.write_text(self.script)
        path.chmod(0o755)
        return path
