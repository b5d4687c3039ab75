"""Errors of the trainers, importable without torch (the CLI catches them on every command)."""


class TrainError(RuntimeError):
    """A training that cannot start or finish; the message says which and why."""


class TrainingError(TrainError):
    """Training cannot go on (diverged, no usable batch); the message says what to change."""
