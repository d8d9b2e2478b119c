"""Errors shared by every module, including the torch-free prediction path."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or settings, not a bug: the command line prints it as one ``error:`` line.

    The newest one is remembered because config parsers (jsonargparse) may re-raise it as
    their own error with only its message, unchained.
    """

    last: UserError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        UserError.last = self


class DataError(UserError, ValueError):
    """Bad user data; the message names the file or value and how to fix it."""
