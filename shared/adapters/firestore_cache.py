"""The embeddings cache over Firestore: one document per content key, the vector as bytes.

Why Firestore (the README weighs it against content-addressed segments in Cloud Storage): a lookup is a
batched read of documents by id (no index to maintain, no segment to open), an entry is written whole by
one document write (a crash never leaves a half entry), and a TTL policy on `expire_at` deletes old
entries (infra/terraform/firestore.tf). A 768-dimension vector is 3 KB, a 3072-dimension one 12 KB: far
under the 1 MiB document limit. Errors are mapped in one place (`shared.adapters.firestore_jobs._mapped`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.cloud import firestore

from shared.adapters.firestore_jobs import _mapped
from shared.ports import EmbeddingCache

__all__ = ["FirestoreEmbeddingCache"]

_READ_BATCH = 300
_WRITE_BATCH = 400  # under the 500 writes of one batch


class FirestoreEmbeddingCache(EmbeddingCache):
    def __init__(self, client: firestore.Client, collection: str, ttl: timedelta):
        self._client = client
        self._collection = client.collection(collection)
        self._ttl = ttl

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with _mapped("reading the embeddings cache"):
            for start in range(0, len(keys), _READ_BATCH):
                refs = [self._collection.document(key) for key in keys[start:start + _READ_BATCH]]
                for snapshot in self._client.get_all(refs, field_paths=["v"]):
                    if snapshot.exists:
                        vector = (snapshot.to_dict() or {}).get("v")
                        if isinstance(vector, bytes) and vector:
                            found[snapshot.id] = vector
        return found

    def put_many(self, entries: dict[str, bytes]) -> None:
        expire_at = datetime.now(UTC) + self._ttl
        items = list(entries.items())
        with _mapped("writing the embeddings cache"):
            for start in range(0, len(items), _WRITE_BATCH):
                batch = self._client.batch()
                for key, vector in items[start:start + _WRITE_BATCH]:
                    batch.set(self._collection.document(key), {"v": vector, "expire_at": expire_at})
                batch.commit()
