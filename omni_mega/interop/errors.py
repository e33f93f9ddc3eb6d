"""The one error type of the interop package: bad input or an unsupported model, said in one line."""


class InteropError(ValueError):
    """A conversion cannot proceed: missing or corrupt files, an unsupported architecture, a config that does not match
    the weights. The message names the file or tensor and, where there is one, the fix."""
