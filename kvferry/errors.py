"""The kvferry error hierarchy.

Bad input raises `ValueError` (or a subclass here that also is one) so that callers
and servicers can map it to `INVALID_ARGUMENT` without knowing every type.
"""


class KvferryError(Exception):
    """Base of every error kvferry raises on purpose."""


class ConfigError(KvferryError, ValueError):
    """A configuration value, model folder or checkpoint is invalid."""


class CapacityError(KvferryError):
    """A request can never fit (KV blocks, sequence slots) in this engine."""


class TransferError(KvferryError):
    """KV blocks could not be moved between workers."""
