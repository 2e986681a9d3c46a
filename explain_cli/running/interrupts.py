"""SIGINT and SIGTERM as an exception the run can clean up after, held back while a result is accounted.

A signal raises `Interrupted` in the main thread at once, so that a long model call stops promptly;
inside `held()` (writing an image's manifest lines and counting it) it waits for the block's end, so
an image is never half-accounted: in the manifest but not in the summary, or the other way round.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop, clean up, and exit 128 + its number.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way can swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    depth = 0  # how many held() blocks the main thread is in
    pending: int | None = None  # a signal that arrived while held
    received: int | None = None  # the first signal of the run


def _handle(signum: int, frame: Any) -> None:
    _State.received = _State.received or signum
    if _State.depth:
        _State.pending = _State.pending or signum
        return
    raise Interrupted(signum)


def received() -> int | None:
    """The signal that stopped the run, if one did. Raised inside a library's C callback (TensorFlow converting
    an array), Interrupted can reach the command as another exception; this says what it really was."""
    return _State.received


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Signals raise Interrupted while the block runs (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _State.depth, _State.pending, _State.received = 0, None, None
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def held(reraise: bool = True) -> Iterator[None]:
    """Hold signals back until the block ends; then raise the first that came (unless `reraise` is off:
    a run already stopping has nothing more to stop)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            if reraise:
                raise Interrupted(signum)
