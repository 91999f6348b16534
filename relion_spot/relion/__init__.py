"""RELION-side runtime: synthetic ground-truthed data, scoring, resume points, progress, preflight.

Pure Python on top of starfile/mrcfile (plus the RELION binaries where a module says so), so the
same code runs on the submission host, on a node, and in the local tests.
"""
