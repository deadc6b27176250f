"""`search`: the k output vectors nearest a query, and the passages they came from.

The query is embedded at the interactive endpoint (task type RETRIEVAL_QUERY, the job's model and
dimensions) and L2-normalised; output vectors are unit norm, so cosine similarity is a dot product.
Scoring streams the job's Parquet files batch by batch and keeps only the best k. The output holds no
text, so the passages are read again from the job's source object generation, with the job's options
(the same reader gives the same ids), stopping as soon as every one of the k ids has been met.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from shared.domain.records import Record

__all__ = ["Hit", "texts_for", "top_k"]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None = None
    title: str | None = None


def top_k(query: np.ndarray, batches: Iterable[tuple[list[str], np.ndarray]], k: int) -> list[Hit]:
    """The `k` best (id, score) over all batches, best first (ties by id). `query` must be unit norm, as
    the rows are."""
    if k < 1:
        return []
    query = np.asarray(query, dtype=np.float32).ravel()
    best_ids: list[str] = []
    best_scores = np.empty(0, dtype=np.float32)
    for ids, matrix in batches:
        if not ids:
            continue
        if matrix.shape[1] != query.shape[0]:
            raise ValueError(f"the query has {query.shape[0]} dimensions, the vectors {matrix.shape[1]}")
        scores = np.concatenate([best_scores, matrix @ query])
        pool = best_ids + list(ids)
        if len(pool) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            best_ids = [pool[i] for i in keep]
            best_scores = scores[keep]
        else:
            best_ids, best_scores = pool, scores
    ranked = sorted(zip(best_ids, best_scores.tolist(), strict=True), key=lambda pair: (-pair[1], pair[0]))
    return [Hit(item_id, float(score)) for item_id, score in ranked]


def texts_for(ids: Iterable[str], items: Iterable[object]) -> dict[str, Record]:
    """The records of `ids` among `items` (records and problems, as `read_records` yields them), read
    only as far as the last one wanted."""
    wanted = set(ids)
    found: dict[str, Record] = {}
    if not wanted:
        return found
    for item in items:
        if isinstance(item, Record) and item.id in wanted and item.id not in found:
            found[item.id] = item
            if len(found) == len(wanted):
                break
    return found
