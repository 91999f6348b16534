"""``relion-spot selftest``: a deployed cluster proves itself (permissions by dry run, a tiny
Class3D, a real spot interruption) and the controller's permission check at start."""
