"""The one exception type for user mistakes.

A `UserError` carries a single line that says what is wrong, where, and how to fix it. The CLI
prints it without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file, an unloadable model: something the user can fix."""
