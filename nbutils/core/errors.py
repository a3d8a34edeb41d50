"""The one exception type users are meant to read."""


class UserError(Exception):
    """A problem the user can fix: the message says what happened and what to do instead.

    The CLI prints it without a traceback (exit code 2); in a notebook, ``nbutils.colab``
    shows it as a short red message instead of a stack of library frames.
    """
