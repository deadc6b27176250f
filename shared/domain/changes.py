"""What a worker changed on its copy of a document, and how to apply just that to the stored one.

A worker holding a lease works on its own copy of a job or shard and saves it from time to time. Others
write the same document meanwhile without the lease: a cancel request, a shard closing (counters), the
poller's next poll time. Writing the whole copy back would undo their writes, so a save writes only the
fields this worker changed since it read (or last saved) the document: leaf by leaf through nested
objects; lists and scalars whole.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["apply_changes", "changes_since", "snapshot"]


def snapshot(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="python")


def changes_since(base: dict[str, Any], current: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of the leaves that differ between two snapshots, with their current values."""
    changed: dict[str, Any] = {}
    for key in base.keys() | current.keys():
        old, new = base.get(key), current.get(key)
        path = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict) and not _is_map(path):
            changed.update(changes_since(old, new, path + "."))
        elif old != new:
            changed[path] = new
    return changed


def apply_changes(document: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    """`document` (a snapshot) with the changed leaves set; returns it."""
    for path, value in changed.items():
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return document


# Free-form maps are compared whole: their keys are data, not fields.
_MAPS = ("source.metadata", "staging.position")


def _is_map(path: str) -> bool:
    return path in _MAPS
