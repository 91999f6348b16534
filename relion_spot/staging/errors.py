"""The two ways staging stops: the user gave something unusable, or the data is not right."""

from __future__ import annotations


class BadInput(ValueError):
    """A value that cannot work (exit 2); the message names it and what is accepted."""

    def __init__(self, option: str, value: object, accepted: str) -> None:
        self.option = option
        self.value = value
        self.accepted = accepted
        super().__init__(f"{option} {value!r} is not accepted: {accepted}")


class StagingError(RuntimeError):
    """Download, unpack or verification failed (exit 1); the message is meant for the user."""
