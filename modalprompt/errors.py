"""Errors a user can fix; the CLI prints their message (no traceback) and exits with status 2."""


class DataError(ValueError):
    """A data file or record is unusable; the message names the file, the record and the field."""
