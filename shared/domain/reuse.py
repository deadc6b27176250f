"""Reuse by content: the key of an embedding, and what keeping a cache of them costs.

A passage's embedding depends on the provider, the model, the task type, the output dimensionality, the
title and the text, and on nothing else: `content_key` hashes exactly those (length-prefixed, so no two
different tuples share a key). The same paragraph in 50 files, or in the next generation of a file, has the
same key, and its vector is taken from the cache instead of being embedded again.
"""

from __future__ import annotations

import hashlib

__all__ = ["CachePrices", "content_key"]


def content_key(provider: str, model: str, task_type: str, dimensions: int, title: str | None, text: str) -> str:
    """A 64-hex-digit key of everything that determines the vector."""
    digest = hashlib.sha256()
    for part in (provider, model.rsplit("/", 1)[-1], task_type, str(dimensions), title or "", text):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class CachePrices:
    """Firestore's list prices (USD): what a cache of documents costs, for the estimates a job reports."""

    READ_PER_100K = 0.06
    WRITE_PER_100K = 0.18
    STORAGE_PER_GIB_MONTH = 0.18

    @classmethod
    def cost(cls, reads: int, writes: int) -> float:
        return round(reads * cls.READ_PER_100K / 1e5 + writes * cls.WRITE_PER_100K / 1e5, 9)

    @classmethod
    def storage_per_month(cls, entries: int, dimensions: int) -> float:
        """Entries of `dimensions` float32 values, with Firestore's per-document overhead (about 100 bytes)."""
        return round(entries * (dimensions * 4 + 100) / 2**30 * cls.STORAGE_PER_GIB_MONTH, 9)
