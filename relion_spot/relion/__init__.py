"""RELION-side runtime: synthetic ground-truthed data, scoring, resume points, progress, preflight.

Pure Python on top of starfile/mrcfile (plus the RELION binaries where a module says so), so the
same code runs on the submission host, on a node, and in the local tests. Each module is also a
command:

    python -m relion_spot.relion.synthetic --out DIR --classes K --particles-per-class N
    python -m relion_spot.relion.score --run-root DIR/Class3D/run --truth DIR/truth.star
    python -m relion_spot.relion.checkpoint run -- <fresh relion_refine command>
    python -m relion_spot.relion.progress --run-root DIR/Class3D/run
    python -m relion_spot.relion.preflight --instance-types g5.xlarge -- <relion_refine command>

`checkpoint run` is what a (re)queued job executes: it starts fresh, continues from the newest
complete iteration, or exits at once when the run has finished, and keeps the progress record
and convergence plot beside the run up to date.
"""
