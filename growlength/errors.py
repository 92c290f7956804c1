"""The one exception type a user sees: a problem with their input, told in one line."""


class GrowLengthError(ValueError):
    """Bad input (config, data, checkpoint). The CLI prints it as one line and exits non-zero."""
