"""The trainer's two outcomes that are not bugs: a run that cannot start, and a run that was stopped."""
from __future__ import annotations

from contract.errors import Interrupted, UserError


class TrainError(UserError, RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class TrainingInterrupted(Interrupted, RuntimeError):
    """SIGINT/SIGTERM arrived: the state was saved, `--resume` continues."""
