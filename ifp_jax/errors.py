"""User-facing data errors (malformed JSONL, empty prompt, unknown task/mixture)."""


class DataError(ValueError):
    """A problem with the user's data or data config; the message is one line naming the fix."""
