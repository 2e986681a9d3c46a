"""The two ways a run can fail short of a bug, each printed as one line."""


class ExplainError(Exception):
    """A run-time failure the user can act on (exit 1): bad model file, no network."""


class BadInput(ExplainError):
    """One input image could not be used; the batch goes on without it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
