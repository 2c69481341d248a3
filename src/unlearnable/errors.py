"""User-facing errors.

Anything a user can cause (a bad path, a corrupt image, a nonsensical budget) raises
:class:`UnlearnableError` with a one-line message that names the file or the cause. The CLI
prints it as ``error: <message>`` and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class UnlearnableError(Exception):
    """A failure the user caused and can fix; the message is one line naming the cause."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI promises a single-line error.
        super().__init__(" ".join(str(message).split()))


class VerificationError(UnlearnableError):
    """A protected output failed verification (budget or hash mismatch)."""

    exit_code = 1


class Interrupted(UnlearnableError):
    """The run was stopped (Ctrl-C or SIGTERM) with its work kept for ``--resume``; the CLI exits
    130 (SIGINT) or 143 (SIGTERM), as a shell reports a process stopped by that signal."""

    exit_code = 130
