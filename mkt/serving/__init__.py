"""The HTTP server of `mkt serve`: every store's `@champion` classifier behind one API.

It imports no Prefect, so it runs wherever the classifier and the registry can be read.
"""

from mkt.serving.app import create_app

__all__ = ["create_app"]
