"""The one base class for errors a user can fix, and the flag-level error.

Every error whose message is a complete one-line explanation for the user (a bad flag, a missing dataset, a file
that is not a YOLOv5 checkpoint, a CUDA device asked for on a CPU machine...) derives from :class:`UserError`.
The entry scripts catch exactly this class (``utils.options.run_cli``) and print the message as one
``script: error: ...`` line with exit code 2; anything else is a bug and keeps its traceback.

This module imports nothing of the toolkit, so any module can raise these errors without an import circle.
"""

from __future__ import annotations


class UserError(ValueError):
    """Base of every error whose message tells the user, in one line, what is wrong and where."""


class UsageError(UserError):
    """A flag or flag combination that cannot work; the message names the flag."""
