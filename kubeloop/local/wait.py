"""Waiting for a condition with a deadline: the one polling helper (on tenacity).

``wait_until(check, timeout=..., what=...)`` calls ``check`` every ``interval`` seconds
until it returns something truthy, and returns that. An exception raised by ``check``
ends the wait at once (a child that exited will not become healthy); running out of
time raises ``TimeoutError`` naming what was awaited, with ``detail()`` appended (a log
tail, the last answer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T:
    """Polls ``check`` until it returns a truthy value; ``TimeoutError`` after ``timeout`` s."""

    def expired(state: RetryCallState) -> T:
        extra = detail() if detail else ""
        raise TimeoutError(f"{what}: not done after {timeout:g}s" + (f"\n{extra}" if extra else ""))

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value),
        retry_error_callback=expired,
        reraise=True,
    )
    return retrying(check)
