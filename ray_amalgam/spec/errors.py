"""The one exception type for bad user input; the CLI maps it to exit code 2."""


class BadInputError(ValueError):
    """Input (a file, URL, field or flag) is not what was expected. The message is one line."""
