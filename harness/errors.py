"""The one error type for bad input: a one-line message naming the file, field or value and what was expected."""


class InputError(ValueError):
    """Bad user input (file, field, value); the message is one line and says what was expected."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError(f"InputError messages are one line, got: {message!r}")
        super().__init__(message)
