"""The one base class of the errors pseudomask reports to a user as a message, not a traceback."""


class PseudomaskError(Exception):
    """Bad input or a bad artifact; the message names the file and the record."""
