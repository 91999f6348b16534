"""``relion-spot demo``: the product end to end on the embedded local cloud (see ``runner``)."""

from .runner import DemoError, DemoResult, DemoSettings, register, run

__all__ = ["DemoError", "DemoResult", "DemoSettings", "register", "run"]
