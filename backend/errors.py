"""Errors the backend reports to users: each message names the problem in plain words."""


class SkySenseError(Exception):
    """Base class; the message is shown to the user as is."""


class InputError(SkySenseError):
    """Bad input: not a raster, wrong bands, missing CRS, empty AOI, bad labels."""


class OutputError(SkySenseError):
    """Output could not be written (disk full, permission, path not allowed)."""


class CancelledError(SkySenseError):
    """The job was cancelled by the user."""
