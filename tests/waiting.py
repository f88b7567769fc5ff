"""Waiting for what a test is about, not for a while.

`wait_for(condition, timeout, what)` polls `condition` and returns its first truthy value as
soon as there is one. The timeout only bounds a hang: it is generous (30 s unless the caller
knows better), so a slow or busy machine never turns a correct run into a failure, and a
wrong run fails with a message naming what did not happen. An exception raised by the
condition (e.g. an `assert proc.poll() is None` that notices a dead process) ends the wait
at once and fails the test with it.

Use it instead of `time.sleep(n)` followed by an assertion, and instead of hand-written
`deadline = time.monotonic() + n` loops.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

TIMEOUT = 30.0  # seconds; bounds a hang, never the expected duration of anything


class WaitTimeout(AssertionError):
    """What a test waited for did not happen (an AssertionError, so pytest shows a failure)."""


def wait_for(condition: Callable[[], T], timeout: float = TIMEOUT, what: str | Callable[[], str] = "the condition",
             interval: float = 0.05) -> T:
    """Poll `condition` every `interval` seconds until it returns something truthy, and
    return that. After `timeout` seconds without it, raise WaitTimeout naming `what` (a
    string, or a function giving one, e.g. to attach a log read at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {text} (last: {value!r})")
        time.sleep(interval)
