"""User-facing errors outside the config: data (malformed JSONL, empty prompt, unknown
task/mixture) and storage (a bucket that cannot be used)."""


class DataError(ValueError):
    """A problem with the user's data or data config; the message is one line naming the fix."""


class StorageError(OSError):
    """A bucket or path that cannot be used (missing, unreachable, access refused); one line
    naming the bucket and the fix."""
