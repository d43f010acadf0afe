"""One exception type for mistakes a user can fix (bad files, bad config, missing paths).

The CLI turns it into a one-line message and exit code 2; anything else is a bug and keeps
its traceback. Messages name the offending thing and say how to fix it.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class VgsslError(Exception):
    """A user-fixable problem; ``str(err)`` is a complete one-line message."""


class ConfigError(VgsslError, ValueError):
    """A bad config value (model, method, augmentation, index): a user error, and a ``ValueError``
    for library callers that validate arguments the usual Python way."""


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, also when a DataLoader worker re-raised it.

    PyTorch re-raises a worker's exception as ``type(exc)(traceback_text)``; the original
    message is then the last line, prefixed with the exception's qualified name.
    """
    if not isinstance(exc, VgsslError):
        return None
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        marker = "VgsslError: "
        text = last.split(marker, 1)[1] if marker in last else last
    return text.splitlines()[0] if text else type(exc).__name__
