"""Exception groups at the edge of our nursery-owning context managers."""

from __future__ import annotations

import trio

from ._errors import InternalError

__all__ = ["collapse"]


def collapse(group: BaseExceptionGroup[BaseException], what: str) -> BaseException:
    """The one real exception in ``group``, or the group itself if it holds only Cancelled.

    For context managers that own a nursery (``open_realtime``, the active router, ...): the
    caller's exception comes out as itself, not wrapped in an ExceptionGroup. Several real
    exceptions mean a background task failed alongside another error: that is reported as
    InternalError with the group as its cause, never unwrapped blindly.

    Args:
        group: what the nursery raised.
        what: names the owner in the InternalError message, e.g. "the realtime client".
    """
    real: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        elif not isinstance(exc, trio.Cancelled):
            real.append(exc)

    walk(group)
    if not real:
        return group
    if len(real) == 1:
        return real[0]
    error = InternalError(f"{len(real)} errors escaped {what}; please report this bug")
    error.__cause__ = group
    return error
