"""Errors that mkt raises for users: each says what failed, the offending value and the fix."""


class MktError(Exception):
    """Base class of every error the CLI shows as a message instead of a traceback."""


class ConfigError(MktError):
    """A store config or setting is invalid."""


class StoreNotFound(MktError):
    """No store with the requested id is registered."""


class ConnectorError(MktError):
    """A connector could not read categories or products from its source."""


class CategoryTreeError(MktError):
    """A category tree is inconsistent (cycles, missing parents, duplicate ids)."""


class NotEnoughData(MktError):
    """A stage cannot run because the store has too few products or categories."""


class ClassifierNotFound(MktError):
    """A store has no registered classifier, or none under the requested alias."""


class IndexTooLarge(MktError):
    """A classifier's index would need more memory than the store's budget allows."""
