"""Request bodies of the embedding surface, parsed and validated as the live API does.

Structural problems (unknown field names, wrong types, a bad taskType or outputDimensionality,
no displayName) are ApiError 400s naming the field path. Empty content is not structural: a batch
item with no text fails on its own (`EmbedItem.empty`); the interactive calls turn it into a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .wire import ApiError, check_fields, field

__all__ = [
    "EMPTY_CONTENT_MESSAGE",
    "MAX_DIMS",
    "MIN_DIMS",
    "TASK_TYPES",
    "CreateSpec",
    "EmbedItem",
    "InlineRequest",
    "check_model",
    "parse_create",
    "parse_embed_request",
    "parse_file_line",
]

MAX_DIMS = 3072
MIN_DIMS = 128
TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)
EMPTY_CONTENT_MESSAGE = "The content is empty: an embedding request needs at least one non-empty text part."

_EMBED_REQUEST_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}
_CONTENT_FIELDS = {"parts", "role"}
_PART_FIELDS = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
}
_BATCH_FIELDS = {
    "name",
    "model",
    "displayName",
    "inputConfig",
    "output",
    "createTime",
    "endTime",
    "updateTime",
    "batchStats",
    "state",
    "priority",
}
_INPUT_CONFIG_FIELDS = {"fileName", "requests"}
_INLINED_REQUEST_FIELDS = {"request", "metadata"}
_FILE_LINE_FIELDS = {"key", "request", "metadata"}
_MODEL_RE = re.compile(r"^models/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Families that are generative, not embedding models: embedding calls on them are 404s.
_GENERATIVE_RE = re.compile(r"(flash|gemma|imagen|veo|learnlm|-tts|^gemini-(?!embedding))", re.IGNORECASE)


@dataclass(frozen=True)
class EmbedItem:
    """One embedding request: the text the model sees, the output size, the task, and the text that is
    counted as its input tokens (text parts and title; None: the same as `text`)."""

    text: str
    dims: int
    task_type: str | None = None
    counted: str | None = None

    @property
    def empty(self) -> bool:
        return not self.text.strip()

    @property
    def counted_text(self) -> str:
        return self.text if self.counted is None else self.counted


@dataclass(frozen=True)
class InlineRequest:
    metadata: Any  # the request's metadata exactly as sent (None: none sent)
    item: EmbedItem


@dataclass(frozen=True)
class CreateSpec:
    display_name: str
    priority: int
    requests: list[InlineRequest] | None
    file_name: str | None


def check_model(name: str, method: str, version: str) -> str:
    """`models/x` for a model the embedding methods accept; a generative model is Google's 404."""
    full = name if name.startswith("models/") else f"models/{name}"
    if not _MODEL_RE.match(full):
        raise ApiError(400, f"Invalid model name: {name!r}; expected models/{{model}}.")
    if _GENERATIVE_RE.search(full.removeprefix("models/")):
        raise ApiError(
            404,
            f"{full} is not found for API version {version}, or is not supported for {method}. "
            "Call ListModels to see the list of available models and their supported methods.",
        )
    return full


def _dims(value: Any, where: str, strict: bool) -> int:
    if value is None:
        return MAX_DIMS
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"Invalid value at '{where}' (TYPE_INT32), {value!r}")
    low = MIN_DIMS if strict else 1
    if not low <= value <= MAX_DIMS:
        raise ApiError(
            400, f"outputDimensionality must be between {low} and {MAX_DIMS}, got {value} at '{where}'."
        )
    return value


def _texts(content: Any, where: str) -> list[str]:
    content = check_fields(content, _CONTENT_FIELDS, where)
    parts = content.get("parts", [])
    if not isinstance(parts, list):
        raise ApiError(400, f"Invalid JSON payload received. Expected an array at '{where}.parts'.")
    texts = []
    for i, part in enumerate(parts):
        part = check_fields(part, _PART_FIELDS, f"{where}.parts[{i}]")
        text = part.get("text")
        if text is None:
            continue
        if not isinstance(text, str):
            raise ApiError(400, f"Invalid value at '{where}.parts[{i}].text' (TYPE_STRING), {text!r}")
        texts.append(text)
    return texts


def parse_embed_request(obj: Any, where: str, strict: bool = True, model: str | None = None) -> EmbedItem:
    """An EmbedContentRequest; `model` (the path's) must match the request's own, if it names one."""
    obj = check_fields(obj, _EMBED_REQUEST_FIELDS, where)
    own_model = obj.get("model")
    if own_model is not None and model is not None:
        own = own_model if str(own_model).startswith("models/") else f"models/{own_model}"
        if own != model:
            raise ApiError(
                400, f"Model {own_model!r} at '{where}.model' does not match the model of the call, {model}."
            )
    task = field(obj, "taskType")
    if task is not None and task not in TASK_TYPES:
        raise ApiError(
            400,
            f"Invalid value at '{where}.task_type' "
            f"(type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), {task!r}",
        )
    texts = _texts(obj.get("content", {}), f"{where}.content")
    text = "\n".join(texts)
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise ApiError(400, f"Invalid value at '{where}.title' (TYPE_STRING), {title!r}")
    if title and task == "RETRIEVAL_DOCUMENT" and text.strip():
        text = f"{title}\n{text}"
    return EmbedItem(
        text=text,
        dims=_dims(field(obj, "outputDimensionality"), f"{where}.output_dimensionality", strict),
        task_type=task,
        counted="\n".join([*texts, title]) if title else None,
    )


def _priority(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ApiError(400, f"Invalid value at 'batch.priority' (TYPE_INT64), {value!r}")


def parse_create(body: Any, model: str, strict: bool = True) -> CreateSpec:
    """The body of `models/{model}:asyncBatchEmbedContent`: `{"batch": {...}}`."""
    body = check_fields(body, {"batch"}, "")
    batch = check_fields(body.get("batch"), _BATCH_FIELDS, "batch")
    display_name = field(batch, "displayName") or ""
    if not isinstance(display_name, str):
        raise ApiError(400, f"Invalid value at 'batch.display_name' (TYPE_STRING), {display_name!r}")
    if strict and not display_name.strip():
        raise ApiError(400, "batch.display_name is required: give the batch a human readable displayName.")
    priority = _priority(batch.get("priority"))
    config = check_fields(field(batch, "inputConfig") or {}, _INPUT_CONFIG_FIELDS, "batch.input_config")
    file_name = field(config, "fileName")
    requests = config.get("requests")
    if (file_name is None) == (requests is None):
        raise ApiError(400, "batch.input_config needs exactly one of file_name or requests.")
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name.startswith("files/"):
            raise ApiError(
                400, f"batch.input_config.file_name must look like files/{{id}}, got {file_name!r}."
            )
        return CreateSpec(display_name, priority, None, file_name)
    where = "batch.input_config.requests"
    requests = check_fields(requests, {"requests"}, where)
    items = requests.get("requests")
    if not isinstance(items, list) or not items:
        raise ApiError(400, f"{where}.requests must hold at least one request.")
    parsed = []
    for i, entry in enumerate(items):
        at = f"{where}.requests[{i}]"
        entry = check_fields(entry, _INLINED_REQUEST_FIELDS, at)
        if "request" not in entry:
            raise ApiError(400, f"{at}.request is required.")
        item = parse_embed_request(entry["request"], f"{at}.request", strict, model)
        parsed.append(InlineRequest(entry.get("metadata"), item))
    return CreateSpec(display_name, priority, parsed, None)


def parse_file_line(obj: Any, line_number: int, strict: bool, model: str) -> tuple[Any, EmbedItem]:
    """One line of an input file, `{"key": K, "request": {...}}`: (key, item); ApiError if invalid."""
    where = f"line {line_number}"
    obj = check_fields(obj, _FILE_LINE_FIELDS, where)
    if "request" not in obj:
        raise ApiError(400, f"{where}: request is required.")
    return obj.get("key"), parse_embed_request(obj["request"], f"{where}.request", strict, model)
