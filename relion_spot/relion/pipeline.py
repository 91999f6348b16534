"""RELION's own project conventions for a job the cluster runs, so the RELION GUI shows it as one
of the project's jobs: the job in ``default_pipeline.star`` (process, its input and output nodes
and edges, the job counter), ``note.txt`` with each attempt's command, and ``run.out`` /
``run.err`` in the job directory.

The pipeline is changed as RELION's GUI changes it: under its lock (the directory
``.relion_lock`` made with an exclusive mkdir, holding ``lock_default_pipeline.star``), read,
changed, written to a temporary name and renamed into place, so a GUI open on the same project,
or another job registering at the same moment on another node, never loses an entry. The job is
registered "Running"; the GUI itself turns it "Succeeded" or "Failed" from the
RELION_JOB_EXIT_SUCCESS / _FAILURE file that ``--pipeline_control`` makes RELION write.
Labels are RELION 5's (pipeline_jobs.h).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import starfile

PIPELINE = "default_pipeline.star"
LOCK_DIR = ".relion_lock"
LOCK_FILE = f"lock_{PIPELINE}"
LOCK_WAIT_SECONDS = 60.0
"""RELION's GUI waits a minute for another holder of the lock, then gives up; so do we."""
STARFILE_STAMP = "# Created by the starfile Python package"
STAR_HEADER = "# version 50001\n"
"""RELION 5's STAR header, in place of the writer's dated stamp (a pipeline changes only when
its content does)."""
CLASS3D_TYPE = "relion.class3d"
RUNNING = "Running"
PARTICLES_LABEL = "ParticleGroupMetadata.star.relion"
MAP_LABEL = "DensityMap.mrc"
MASK_LABEL = "Mask3D.mrc"
CLASS3D_DATA_LABEL = "ParticleGroupMetadata.star.relion.refine3d"
"""What RELION 5 labels a Class3D run's _data.star (getOutputNodesRefine)."""
CLASS3D_OPTIMISER_LABEL = "OptimiserData.star.relion.class3d"


class PipelineError(RuntimeError):
    """The project's pipeline could not be read, locked or written; the message says which."""


@dataclass(frozen=True)
class Node:
    name: str
    label: str

    depth: int = 1
    """RELION's type-label depth (how many label parts name its .Nodes folder); 1 for every
    node a Class3D job enters."""


@dataclass(frozen=True)
class Process:
    name: str
    """The job directory relative to the project, with RELION's trailing slash."""
    type_label: str
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]


REFINE3D_TYPE = "relion.refine3d"
REFINE3D_MAP_LABEL = "DensityMap.mrc.relion.refine3d"
REFINE3D_HALF_MAP_LABEL = "DensityMap.mrc.relion.halfmap.refine3d"
REFINE3D_OPTIMISER_LABEL = "OptimiserData.star.relion.refine3d"


def refine3d_process(job_dir: str, args: Sequence[str]) -> Process:
    """A 3D auto-refine as RELION's GUI enters it: its particles and reference in; its final
    particles, map, half map and optimiser out (what a PostProcess or the next job picks)."""
    inputs = class3d_process(job_dir, args, iterations=0).inputs
    root = f"{job_dir.rstrip('/')}/run"
    outputs = (
        Node(f"{root}_data.star", CLASS3D_DATA_LABEL),
        Node(f"{root}_class001.mrc", REFINE3D_MAP_LABEL),
        Node(f"{root}_half1_class001_unfil.mrc", REFINE3D_HALF_MAP_LABEL),
        Node(f"{root}_optimiser.star", REFINE3D_OPTIMISER_LABEL),
    )
    return Process(f"{job_dir.rstrip('/')}/", REFINE3D_TYPE, inputs, outputs)


POSTPROCESS_TYPE = "relion.postprocess"
POSTPROCESS_MAP_LABEL = "DensityMap.mrc.relion.postprocess"
POSTPROCESS_MASKED_LABEL = "DensityMap.mrc.relion.postprocess.masked"
POSTPROCESS_STAR_LABEL = "ProcessData.star.relion.postprocess"


def postprocess_process(job_dir: str, half_map: str, mask: str) -> Process:
    """A PostProcess as RELION's GUI enters it: a refinement's half map and a mask in; the
    sharpened map, its masked copy and the FSC's STAR out."""
    name = f"{job_dir.rstrip('/')}/"
    outputs = (
        Node(f"{name}postprocess.mrc", POSTPROCESS_MAP_LABEL),
        Node(f"{name}postprocess_masked.mrc", POSTPROCESS_MASKED_LABEL),
        Node(f"{name}postprocess.star", POSTPROCESS_STAR_LABEL),
    )
    inputs = (Node(half_map, REFINE3D_HALF_MAP_LABEL), Node(mask, MASK_LABEL))
    return Process(name, POSTPROCESS_TYPE, inputs, outputs)


def class3d_process(job_dir: str, args: Sequence[str], *, iterations: int) -> Process:
    """The Class3D job as RELION's GUI would have entered it, from relion_refine's arguments."""
    words = list(args)

    def value(flag: str) -> str | None:
        return words[words.index(flag) + 1] if flag in words[:-1] else None

    inputs = [
        Node(path, label)
        for flag, label in (
            ("--i", PARTICLES_LABEL),
            ("--ref", MAP_LABEL),
            ("--solvent_mask", MASK_LABEL),
            ("--continue", CLASS3D_OPTIMISER_LABEL),
        )
        if (path := value(flag)) is not None
    ]
    root = f"{job_dir.rstrip('/')}/run_it{iterations:03d}"
    outputs = (
        Node(f"{root}_data.star", CLASS3D_DATA_LABEL),
        Node(f"{root}_optimiser.star", CLASS3D_OPTIMISER_LABEL),
    )
    return Process(f"{job_dir.rstrip('/')}/", CLASS3D_TYPE, tuple(inputs), outputs)


@contextmanager
def pipeline_lock(project: Path, holder: str, *, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """RELION's pipeline lock: the lock directory made exclusively, the lock file inside it
    naming the holder; removed on the way out."""
    lock_dir = project / LOCK_DIR
    deadline = time.monotonic() + wait
    while True:
        try:
            lock_dir.mkdir(mode=0o700)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"{lock_dir} has been held for over {wait:g} s (RELION's GUI or another job); "
                    f"if nothing is writing the pipeline, remove it"
                ) from None
            time.sleep(0.5)
    try:
        (lock_dir / LOCK_FILE).write_text(f"{holder}\n")
        yield
    finally:
        (lock_dir / LOCK_FILE).unlink(missing_ok=True)
        lock_dir.rmdir()


def _read(path: Path) -> dict[str, pd.DataFrame | dict]:
    if not path.exists():
        return {}
    try:
        return dict(starfile.read(path, always_dict=True))
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path} is not a STAR file RELION wrote: {err}") from None


def _counter(blocks: dict[str, pd.DataFrame | dict]) -> int:
    general = blocks.get("pipeline_general")
    if isinstance(general, dict):
        return int(general.get("rlnPipeLineJobCounter", 1))
    if isinstance(general, pd.DataFrame) and "rlnPipeLineJobCounter" in general:
        return int(general["rlnPipeLineJobCounter"].iloc[0])
    return 1


def _rows(table: pd.DataFrame | dict | None, columns: Sequence[str]) -> list[tuple[str, ...]]:
    if table is None:
        return []
    frame = pd.DataFrame([table]) if isinstance(table, dict) else table
    if frame.empty:
        return []
    return [tuple(str(v) for v in row) for row in frame[list(columns)].itertuples(index=False)]


PROCESS_COLUMNS = (
    "rlnPipeLineProcessName",
    "rlnPipeLineProcessAlias",
    "rlnPipeLineProcessTypeLabel",
    "rlnPipeLineProcessStatusLabel",
)
NODE_COLUMNS = ("rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel", "rlnPipeLineNodeTypeLabelDepth")
INPUT_COLUMNS = ("rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess")
OUTPUT_COLUMNS = ("rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode")


def register(project: Path, process: Process, *, job_number: int, holder: str) -> bool:
    """Add the job to the project's pipeline unless it is there; True if it was added. The job
    counter becomes at least ``job_number + 1``, as RELION's GUI leaves it after a new job."""
    path = project / PIPELINE
    with pipeline_lock(project, holder):
        blocks = _read(path)
        counter = max(_counter(blocks), job_number + 1)
        processes = _rows(blocks.get("pipeline_processes"), PROCESS_COLUMNS)
        if any(row[0] == process.name for row in processes):
            return False
        processes.append((process.name, "None", process.type_label, RUNNING))
        nodes = _rows(blocks.get("pipeline_nodes"), NODE_COLUMNS)
        known = {row[0] for row in nodes}
        for node in (*process.inputs, *process.outputs):
            if node.name not in known:
                nodes.append((node.name, node.label, str(node.depth)))
                known.add(node.name)
        inputs = _rows(blocks.get("pipeline_input_edges"), INPUT_COLUMNS)
        inputs += [(node.name, process.name) for node in process.inputs]
        outputs = _rows(blocks.get("pipeline_output_edges"), OUTPUT_COLUMNS)
        outputs += [(process.name, node.name) for node in process.outputs]
        written = {
            "pipeline_general": {"rlnPipeLineJobCounter": counter},
            "pipeline_processes": pd.DataFrame(processes, columns=list(PROCESS_COLUMNS)),
            "pipeline_nodes": pd.DataFrame(nodes, columns=list(NODE_COLUMNS)).astype(
                {"rlnPipeLineNodeTypeLabelDepth": int}
            ),
            "pipeline_input_edges": pd.DataFrame(inputs, columns=list(INPUT_COLUMNS)),
            "pipeline_output_edges": pd.DataFrame(outputs, columns=list(OUTPUT_COLUMNS)),
        }
        temporary = path.with_name(f".{PIPELINE}.{os.getpid()}")
        starfile.write(written, temporary)
        lines = temporary.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith(STARFILE_STAMP):
            lines[0] = STAR_HEADER
        temporary.write_text("".join(lines))
        os.replace(temporary, path)
    return True


def append_note(job_dir: Path, command: Sequence[str], *, now: float | None = None) -> None:
    """note.txt as RELION's pipeliner appends it each time it executes a job."""
    stamp = time.ctime(time.time() if now is None else now)
    with (job_dir / "note.txt").open("a") as note:
        note.write(f"\n ++++ Executing new job on {stamp}\n")
        note.write(" ++++ with the following command(s): \n")
        note.write(" ".join(command) + "\n")
        note.write(" ++++ \n")
