"""What one provider serves for one model: the facts that used to sit in the domain as Gemini constants.

A provider adapter publishes a `Capabilities` per model it serves (`BatchProvider.capabilities`); the
domain validates options against it, staging cuts shards within its batch limits, the capacity ledger
starts from its quotas, and the cost estimate reads its prices. Nothing here names a vendor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Capabilities", "Quotas", "ledger_key"]


@dataclass(frozen=True, slots=True)
class Quotas:
    """A project's published batch limits for one model (a setting may lower them; the ledger learns the
    real, lower cap from refusals)."""

    enqueued_tokens: int | None = None  # tokens over all active batches of the model; None: no quota
    concurrent_batches: int | None = None  # active batches of the project
    file_storage_bytes: int | None = None  # uploaded and result files kept by the provider


@dataclass(frozen=True, slots=True)
class Capabilities:
    provider: str  # "gemini", "vertex"
    model: str  # the model's plain id, e.g. "gemini-embedding-001"
    task_types: tuple[str, ...]  # accepted task types, wire spelling
    default_task_type: str
    min_dimensions: int
    max_dimensions: int
    recommended_dimensions: tuple[int, ...]
    max_input_tokens: int  # one input, in the provider's tokens
    max_batch_rows: int | None  # requests in one batch; None: no documented limit
    max_batch_bytes: int  # the largest batch input (file or object)
    title_task_types: tuple[str, ...] = ()  # task types that take a separate title
    task_in_text: bool = False  # task and title go into the text as a prompt prefix (newer models)
    reports_tokens: bool = False  # the provider reports real token counts per item
    quotas: Quotas = field(default_factory=Quotas)
    price_batch_per_million: float = 0.0  # USD per million input tokens
    price_interactive_per_million: float = 0.0

    @property
    def ledger_key(self) -> str:
        return ledger_key(self.provider, self.model)

    def dimensions_text(self) -> str:
        recommended = ", ".join(str(d) for d in self.recommended_dimensions)
        return f"integers from {self.min_dimensions} to {self.max_dimensions} ({recommended} recommended)"


def ledger_key(provider: str, model: str) -> str:
    """The id of the capacity ledger of one provider's model (quotas are per model and project)."""
    return f"{provider}~{model.rsplit('/', 1)[-1]}"
