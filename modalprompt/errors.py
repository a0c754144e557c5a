"""Errors a user can fix; the CLI prints their message (no traceback) and exits with status 2."""


class DataError(ValueError):
    """A data file or record is unusable; the message names the file, the record and the field."""


class BaseModelError(ValueError):
    """A base-model folder is missing, incomplete or in the wrong layout."""


class CheckpointError(ValueError):
    """A stage checkpoint is missing, truncated, or does not belong with this base model or config."""


class PluginError(ValueError):
    """An installed package's method, base-model family or scorer (an entry point) does not load, or its
    name is taken; the message names the entry point and the package it comes from."""
