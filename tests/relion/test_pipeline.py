"""The job in the project's RELION pipeline as RELION's GUI would enter it (golden file), kept
beside what is there, under RELION's own lock, once, by concurrent jobs without loss; note.txt
as RELION's pipeliner writes it. (RELION 5 itself reading and updating the entry is checked
where it runs: tests/jobs/test_local_run.py.)"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import starfile

from relion_spot.relion import pipeline
from relion_spot.relion.pipeline import PipelineError, append_note, class3d_process, register

from ..slurm import golden

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
ARGS = [
    "--o", "Class3D/job003/run", "--i", "Extract/job002/particles.star", "--ref",
    "Import/job001/reference.mrc", "--K", "6", "--iter", "25", "--solvent_mask", "mask.mrc",
]  # fmt: skip
GUI_PIPELINE = """
# version 50001

data_pipeline_general

_rlnPipeLineJobCounter                       3


# version 50001

data_pipeline_processes

loop_
_rlnPipeLineProcessName #1
_rlnPipeLineProcessAlias #2
_rlnPipeLineProcessTypeLabel #3
_rlnPipeLineProcessStatusLabel #4
Import/job001/       None relion.importtomo.map  Succeeded
Extract/job002/       None relion.extract  Succeeded


# version 50001

data_pipeline_nodes

loop_
_rlnPipeLineNodeName #1
_rlnPipeLineNodeTypeLabel #2
_rlnPipeLineNodeTypeLabelDepth #3
Import/job001/reference.mrc DensityMap.mrc            1
Extract/job002/particles.star ParticleGroupMetadata.star.relion            1


# version 50001

data_pipeline_input_edges

loop_
_rlnPipeLineEdgeFromNode #1
_rlnPipeLineEdgeProcess #2
Import/job001/reference.mrc Extract/job002/


# version 50001

data_pipeline_output_edges

loop_
_rlnPipeLineEdgeProcess #1
_rlnPipeLineEdgeToNode #2
Import/job001/ Import/job001/reference.mrc
Extract/job002/ Extract/job002/particles.star
"""


def _process(job: int = 3) -> pipeline.Process:
    args = [w.replace("job003", f"job{job:03d}") for w in ARGS]
    return class3d_process(f"Class3D/job{job:03d}", args, iterations=25)


def _table(project: Path, block: str) -> list[tuple[str, ...]]:
    data = starfile.read(project / pipeline.PIPELINE, always_dict=True)[block]
    return [tuple(str(v) for v in row) for row in data.itertuples(index=False)]


def test_a_new_project_gets_the_job_as_the_gui_would_enter_it(tmp_path: Path) -> None:
    assert register(tmp_path, _process(), job_number=3, holder="test")
    text = (tmp_path / pipeline.PIPELINE).read_text()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(golden, "GOLDEN_DIR", GOLDEN_DIR)
        golden.check_golden("default_pipeline.star", text)
    assert not (tmp_path / pipeline.LOCK_DIR).exists(), "the lock is released"


def test_the_gui_s_jobs_stay_and_the_counter_only_grows(tmp_path: Path) -> None:
    (tmp_path / pipeline.PIPELINE).write_text(GUI_PIPELINE)
    assert register(tmp_path, _process(), job_number=3, holder="test")
    assert not register(tmp_path, _process(), job_number=3, holder="test"), "once"

    processes = _table(tmp_path, "pipeline_processes")
    assert [p[0] for p in processes] == ["Import/job001/", "Extract/job002/", "Class3D/job003/"]
    assert processes[-1] == ("Class3D/job003/", "None", "relion.class3d", "Running")
    assert processes[1][3] == "Succeeded", "the GUI's statuses untouched"
    nodes = {row[0]: row[1] for row in _table(tmp_path, "pipeline_nodes")}
    assert nodes["Extract/job002/particles.star"] == "ParticleGroupMetadata.star.relion"
    assert nodes["Class3D/job003/run_it025_optimiser.star"] == "OptimiserData.star.relion.class3d"
    assert len(nodes) == 5, "an input already known is not entered twice"
    assert ("Extract/job002/particles.star", "Class3D/job003/") in _table(
        tmp_path, "pipeline_input_edges"
    )
    general = starfile.read(tmp_path / pipeline.PIPELINE, always_dict=True)["pipeline_general"]
    assert int(general["rlnPipeLineJobCounter"]) == 4


def _register_job(project: str, job: int) -> None:
    register(Path(project), _process(job), job_number=job, holder=f"job {job}")


def test_concurrent_jobs_lose_no_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_register_job, args=(str(tmp_path), n)) for n in range(3, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    names = [p[0] for p in _table(tmp_path, "pipeline_processes")]
    assert sorted(names) == [f"Class3D/job{n:03d}/" for n in range(3, 7)]
    general = starfile.read(tmp_path / pipeline.PIPELINE, always_dict=True)["pipeline_general"]
    assert int(general["rlnPipeLineJobCounter"]) == 7


def test_a_job_waits_for_the_gui_s_lock_and_says_so_when_it_is_never_released(
    tmp_path: Path,
) -> None:
    lock = tmp_path / pipeline.LOCK_DIR
    lock.mkdir()
    (lock / pipeline.LOCK_FILE).write_text("relion GUI\n")

    def release() -> None:
        time.sleep(1.5)
        (lock / pipeline.LOCK_FILE).unlink()
        lock.rmdir()

    releaser = threading.Thread(target=release)
    started = time.monotonic()
    releaser.start()
    assert register(tmp_path, _process(), job_number=3, holder="test")
    releaser.join()
    assert time.monotonic() - started >= 1.4

    lock.mkdir()
    held = pipeline.pipeline_lock(tmp_path, "test", wait=1)
    with pytest.raises(PipelineError, match=r"\.relion_lock has been held for over 1 s"), held:
        pass
    assert lock.is_dir(), "someone else's lock is left alone"


def test_note_txt_is_appended_as_relion_writes_it(tmp_path: Path) -> None:
    append_note(tmp_path, ["relion_refine", "--o", "Class3D/job003/run"], now=0)
    append_note(tmp_path, ["relion_refine", "--continue", "x"], now=60)
    lines = (tmp_path / "note.txt").read_text().splitlines()
    assert lines[0] == "" and lines[1].startswith(" ++++ Executing new job on ")
    assert lines[2:5] == [
        " ++++ with the following command(s): ",
        "relion_refine --o Class3D/job003/run",
        " ++++ ",
    ]
    assert lines[8] == "relion_refine --continue x"
