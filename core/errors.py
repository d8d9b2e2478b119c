"""Errors shared by every module, including the torch-free prediction path."""


class DataError(ValueError):
    """Bad user data; the message names the file or value and how to fix it."""
