"""Cleaning of product titles before they are stored, embedded or classified."""

import hashlib
import math
import re
import unicodedata

MAX_TITLE_CHARS = 500
_WHITESPACE = re.compile(r"\s+")


def clean_title(raw: object) -> str:
    """Return a product title in NFKC form with control characters and repeated spaces removed.

    Missing values (None, NaN) become an empty string; titles longer than
    `MAX_TITLE_CHARS` are cut at that length. Emoji and other symbols are kept.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return ""
    text = unicodedata.normalize("NFKC", str(raw))
    # Control and format characters (category C*) break tokenisers and logs; a zero-width
    # joiner inside an emoji sequence is the only one worth keeping.
    text = "".join(
        ch if ch == "\u200d" or not unicodedata.category(ch).startswith("C") else " "
        for ch in text
    )
    text = _WHITESPACE.sub(" ", text).strip()
    return text[:MAX_TITLE_CHARS].rstrip()


def title_key(title: str) -> str:
    """Return the key under which two titles count as the same name (case-folded)."""
    return title.casefold()


def hash_text(text: str) -> str:
    """Return the SHA-256 hex digest of a text, the embedding cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
