"""The Files API's upload routes: resumable sessions (as google-genai uses them) and raw uploads.

A session's bytes stream to a file under the data directory as they arrive (memory stays flat for
multi-GB files); its URL carries a random upload_id and is the only credential later requests need.
Every answer on a session carries X-Goog-Upload-Status (google-genai retries a chunk whose answer
lacks it).

Quotas: a declared size over `file_bytes` is refused at start, and a declared size is reserved against
`file_storage_bytes` at start; an undeclared size is checked and reserved chunk by chunk as bytes arrive.
A refusal is a 429 that ends the session and frees what it had reserved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .emulator import Emulator
from .store import MAX_FILE_BYTES, FileRecord, UploadSession
from .web import api_version, base_url, json_response, read_json
from .wire import ApiError, check_fields, field, new_id

__all__ = ["upload_routes"]

log = logging.getLogger("gemini_emulator")

_FILE_FIELDS = {
    "name",
    "displayName",
    "mimeType",
    "sizeBytes",
    "createTime",
    "updateTime",
    "expirationTime",
    "sha256Hash",
    "uri",
    "downloadUri",
    "state",
    "source",
    "videoMetadata",
    "error",
}
_FILE_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def _status_headers(session: UploadSession, status: str = "active") -> dict[str, str]:
    """A session's X-Goog-Upload-Status and the bytes it has received so far."""
    return {"X-Goog-Upload-Status": status, "X-Goog-Upload-Size-Received": str(session.received)}


def upload_routes(emu: Emulator) -> list[Route]:
    """`POST /upload/{version}/files`: a session start (key needed), a session request (no key), or raw."""

    async def upload_route(request: Request) -> Response:
        token = request.query_params.get("upload_id")
        if token is not None:
            return await emu.api(request, "upload_chunks", lambda: upload_session(request, token), key=False)
        return await emu.api(request, "uploads", lambda: upload_start(request))

    async def upload_start(request: Request) -> Response:
        version = api_version(request)
        protocol = request.headers.get("x-goog-upload-protocol", "").strip().lower()
        if protocol == "raw":
            return await upload_raw(request, version)
        if protocol != "resumable":
            raise ApiError(
                400,
                f"X-Goog-Upload-Protocol {protocol or '(missing)'!r} is not supported by the emulator: "
                "use resumable (as google-genai does) or raw.",
            )
        command = request.headers.get("x-goog-upload-command", "").strip().lower()
        if command != "start":
            raise ApiError(
                400, f"A resumable upload begins with X-Goog-Upload-Command: start, got {command!r}."
            )
        file_id, display_name, mime, declared = _file_metadata(request, await read_json(request))
        if declared is not None:
            emu.store.ledger.admit_bytes(declared)  # 429 when storage is full: no session is made
        path = emu.store.work_dir / f"upload-{file_id}-{new_id(6)}"
        path.touch()
        session_token = secrets.token_urlsafe(24)
        with emu.store.lock:
            emu.store.uploads[session_token] = UploadSession(
                token=session_token,
                file_id=file_id,
                path=path,
                mime_type=mime,
                declared_size=declared,
                display_name=display_name,
                hasher=hashlib.sha256(),
                reserved=declared or 0,
            )
        url = (
            f"{base_url(request)}/upload/{version}/files?upload_id={session_token}&upload_protocol=resumable"
        )
        return Response(
            b"",
            headers={
                "X-Goog-Upload-URL": url,
                "X-Goog-Upload-Control-URL": url,
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-Chunk-Granularity": "8388608",
            },
        )

    def _file_metadata(request: Request, body: Any) -> tuple[str, str | None, str, int | None]:
        body = check_fields(body, {"file"}, "")
        meta = check_fields(body.get("file") or {}, _FILE_FIELDS, "file")
        declared_raw = request.headers.get("x-goog-upload-header-content-length") or field(meta, "sizeBytes")
        declared: int | None = None
        if declared_raw is not None:
            try:
                declared = int(declared_raw)
            except (TypeError, ValueError):
                raise ApiError(400, f"Invalid upload size {declared_raw!r}.") from None
            emu.store.ledger.check_file_size(declared)  # the file_bytes quota: 429
            if declared > MAX_FILE_BYTES:
                raise ApiError(
                    400, f"The file is {declared} bytes; the Files API takes at most {MAX_FILE_BYTES} (2 GB)."
                )
        mime = (
            request.headers.get("x-goog-upload-header-content-type")
            or field(meta, "mimeType")
            or "application/octet-stream"
        )
        wanted = meta.get("name")
        if wanted is not None:
            wanted = str(wanted).removeprefix("files/")
            if not _FILE_ID_RE.match(wanted):
                raise ApiError(
                    400,
                    f"Invalid file name {wanted!r}: up to 40 lowercase letters, digits or dashes, "
                    "not starting or ending with a dash.",
                )
        display_name = field(meta, "displayName")
        return emu.store.new_file_id(wanted), display_name, mime, declared

    async def _stream_to(session: UploadSession, request: Request) -> None:
        with session.path.open("ab") as out:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if (
                    session.declared_size is not None
                    and session.received + len(chunk) > session.declared_size
                ):
                    raise ApiError(
                        400,
                        f"The upload sent more than the {session.declared_size} bytes declared at start.",
                        headers={"X-Goog-Upload-Status": "final"},
                    )
                if session.declared_size is None:
                    _reserve(session, len(chunk))
                out.write(chunk)
                session.hasher.update(chunk)
                session.received += len(chunk)

    def _reserve(session: UploadSession, size: int) -> None:
        """Quota for `size` more bytes of an upload of undeclared size (a 429 ends the session)."""
        final = {"X-Goog-Upload-Status": "final"}
        try:
            emu.store.ledger.check_file_size(session.received + size)
            emu.store.ledger.admit_bytes(size)
        except ApiError as exc:
            raise ApiError(exc.code, exc.message, headers=final) from None
        session.reserved += size

    def _finalize(session: UploadSession, request: Request, version: str) -> Response:
        if session.declared_size is not None and session.received != session.declared_size:
            raise ApiError(
                400,
                f"Finalized after {session.received} bytes; {session.declared_size} were declared at start.",
                headers={"X-Goog-Upload-Status": "final"},
            )
        final = emu.store.files_dir / f"{session.file_id}.bin"
        session.path.replace(final)
        record = emu.store.add_file(
            FileRecord(
                id=session.file_id,
                path=final,
                mime_type=session.mime_type,
                size_bytes=session.received,
                sha256_hex=session.hasher.hexdigest(),
                source="UPLOADED",
                display_name=session.display_name,
            ),
            reserved=True,
        )
        session.reserved = 0  # the stored file holds these bytes now
        log.info("%s uploaded: %d bytes", record.name, record.size_bytes)
        return json_response(
            {"file": record.resource(base_url(request), version)}, headers=_status_headers(session, "final")
        )

    async def upload_session(request: Request, token: str) -> Response:
        version = api_version(request)
        with emu.store.lock:
            session = emu.store.uploads.get(token)
            if session is None or session.finished:
                raise ApiError(
                    404,
                    "No upload session with this id (finished, cancelled or unknown).",
                    headers={"X-Goog-Upload-Status": "final"},
                )
            if session.busy:
                raise ApiError(
                    409,
                    "Another request is writing to this upload session.",
                    status="ABORTED",
                    headers={"X-Goog-Upload-Status": "active"},
                )
            session.busy = True
        try:
            commands = {
                c.strip().lower()
                for c in request.headers.get("x-goog-upload-command", "").split(",")
                if c.strip()
            }
            status_headers = _status_headers(session)
            if commands == {"query"}:
                return Response(b"", headers=status_headers)
            if commands == {"cancel"}:
                _end_session(session, discard=True)
                return Response(b"", headers={"X-Goog-Upload-Status": "cancelled"})
            if not commands or not commands <= {"upload", "finalize"}:
                raise ApiError(
                    400,
                    f"Unknown X-Goog-Upload-Command {request.headers.get('x-goog-upload-command')!r}.",
                    headers=status_headers,
                )
            if "upload" in commands:
                offset_raw = request.headers.get("x-goog-upload-offset")
                if offset_raw is None or not offset_raw.strip().isdigit():
                    raise ApiError(
                        400,
                        "X-Goog-Upload-Offset is required with the upload command.",
                        headers=status_headers,
                    )
                if int(offset_raw) != session.received:
                    raise ApiError(
                        400,
                        f"X-Goog-Upload-Offset {offset_raw} does not match the {session.received} bytes received.",
                        headers=status_headers,
                    )
                try:
                    await _stream_to(session, request)
                except ApiError:
                    _end_session(session, discard=True)
                    raise
            if "finalize" in commands:
                try:
                    response = _finalize(session, request, version)
                except ApiError:
                    _end_session(session, discard=True)
                    raise
                _end_session(session)
                return response
            return Response(b"", headers=_status_headers(session))
        finally:
            session.busy = False

    def _end_session(session: UploadSession, *, discard: bool = False) -> None:
        """No request reaches `session` any more; `discard` also deletes the bytes it received. (A raw
        upload's session was never registered: its token "raw" is no session URL's.)"""
        with emu.store.lock:
            session.finished = True
            emu.store.uploads.pop(session.token, None)
            reserved, session.reserved = session.reserved, 0
        if discard:
            emu.store.ledger.release_bytes(reserved)
            with contextlib.suppress(FileNotFoundError):
                session.path.unlink()

    async def upload_raw(request: Request, version: str) -> Response:
        mime = request.headers.get("x-goog-upload-header-content-type") or request.headers.get(
            "content-type", "application/octet-stream"
        )
        file_id = emu.store.new_file_id()
        session = UploadSession(
            token="raw",
            file_id=file_id,
            path=emu.store.work_dir / f"upload-{file_id}-{new_id(6)}",
            mime_type=mime.split(";")[0].strip(),
            declared_size=None,
            display_name=None,
            hasher=hashlib.sha256(),
        )
        session.path.touch()
        try:
            await _stream_to(session, request)
            if session.received > MAX_FILE_BYTES:
                raise ApiError(400, "The Files API takes at most 2 GB.")
            return _finalize(session, request, version)
        except ApiError:
            _end_session(session, discard=True)
            raise

    # -- admin -----------------------------------------------------------------------------------

    return [Route("/upload/{version}/files", upload_route, methods=["POST"])]
