"""From an object's stored bytes to content: gzip, byte-order marks, binary sniffing, text and lines.

Everything streams in blocks of `READ_SIZE`: nothing here holds more than a block or two, plus one line
of at most `max_record_bytes` in `iter_lines`. Fatal problems are raised as `InputError`.

Resuming: `LineReader.offset` counts the bytes consumed through the last line it gave, `skip` drops a
number of bytes from a stream without looking at them, and `iter_text(..., offset=)` decodes from the
middle of a content (at a character's start), so a read can continue from a byte offset.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from shared.ingest.problems import (
    BINARY_CONTENT,
    CORRUPT_GZIP,
    DECOMPRESSED_TOO_LARGE,
    EMPTY_INPUT,
    INVALID_ENCODING,
    INVALID_UTF8,
    TRUNCATED_GZIP,
    UNSUPPORTED_ENCODING,
    InputError,
)

__all__ = [
    "BINARY_PROBE_BYTES",
    "Content",
    "LineReader",
    "READ_SIZE",
    "TooLong",
    "iter_lines",
    "iter_text",
    "open_content",
    "skip",
    "utf8_reader",
]

READ_SIZE = 256 * 1024
SKIP_SIZE = 4 * 1024 * 1024  # bytes read at a time when skipping to a resume offset
#: NUL bytes within this many bytes at the start mean binary content (as git decides).
BINARY_PROBE_BYTES = 8000
GZIP_MAGIC = b"\x1f\x8b"

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_ACCEPTED_ENCODINGS = ("", "identity", "gzip", "x-gzip")

Read = Callable[[int], bytes]


def _read_upto(read: Read, size: int, parts: list[bytes] | None = None) -> bytes:
    """Up to `size` bytes, fewer only at the end: streams may return short reads. What was read so far
    is in `parts` (when given) should `read` raise."""
    parts = [] if parts is None else parts
    got = 0
    while got < size:
        part = read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _probe(read: Read, size: int) -> tuple[bytes, InputError | None]:
    """Like `_read_upto`, but a problem met on the way is returned with the bytes before it."""
    parts: list[bytes] = []
    try:
        return _read_upto(read, size, parts), None
    except InputError as exc:
        return b"".join(parts), exc


class _Raising:
    def __init__(self, error: InputError):
        self._error = error

    def read(self, size: int) -> bytes:
        raise self._error


class _Prefixed:
    """Serves `head`, then the rest of `read`: a push-back, since the stream may not support peek."""

    def __init__(self, head: bytes, read: Read):
        self._head = head
        self._read = read

    def read(self, size: int) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return self._read(size)


class _Gunzip:
    """Streaming gzip decompression: concatenated members, zero padding, and a bound on the output.

    Each `decompress` call is capped at the caller's `size`, so a bomb never inflates in memory: the
    unconsumed input waits in `unconsumed_tail`.
    """

    def __init__(self, read: Read, max_bytes: int):
        self._read = read
        self._max = max_bytes
        self._decompressor: zlib._Decompress | None = zlib.decompressobj(31)
        self._input = b""
        self._output = 0

    def read(self, size: int) -> bytes:
        while True:
            if self._decompressor is None and not self._next_member():
                return b""
            if not self._input:
                self._input = self._read(READ_SIZE)
                if not self._input:
                    raise InputError(TRUNCATED_GZIP, (
                        f"The gzip data ends early, after {self._output} decompressed bytes: "
                        "the upload was cut short, so upload the whole file again."
                    ))
            try:
                out = self._decompressor.decompress(self._input, size)
            except zlib.error as exc:
                raise InputError(CORRUPT_GZIP, (
                    f"The gzip data is damaged after {self._output} decompressed bytes ({exc}): "
                    "compress the file again with gzip and upload it again."
                )) from None
            if self._decompressor.eof:
                self._input = self._decompressor.unused_data
                self._decompressor = None
            else:
                self._input = self._decompressor.unconsumed_tail
            self._output += len(out)
            if self._output > self._max:
                raise InputError(DECOMPRESSED_TOO_LARGE, (
                    f"The file decompresses to more than {self._max} bytes, the limit for one input: "
                    "split it into smaller files."
                ))
            if out:
                return out

    def _next_member(self) -> bool:
        """After a member's end: start the next one, or report the end (trailing zeros allowed)."""
        while True:
            self._input = self._input.lstrip(b"\x00")
            if len(self._input) >= len(GZIP_MAGIC):
                break
            more = self._read(READ_SIZE)
            if not more:
                if not self._input:
                    return False
                break
            self._input += more
        if not self._input.startswith(GZIP_MAGIC):
            raise InputError(CORRUPT_GZIP, (
                f"The gzip data is followed by bytes that are not gzip, after {self._output} decompressed "
                "bytes: compress the file again with gzip and upload it again."
            ))
        self._decompressor = zlib.decompressobj(31)
        return True


@dataclass(frozen=True)
class Content:
    """An object's content, decompressed, its byte-order mark removed."""

    read: Read  # content bytes after the mark; short reads possible, b"" at the end
    encoding: str  # a Python codec name: utf-8, utf-16-le, utf-16-be, utf-32-le, utf-32-be
    bom_length: int  # bytes of byte-order mark skipped: byte offsets in messages count them
    compressed: bool


def open_content(stream: BinaryIO, *, max_decompressed_bytes: int, content_encoding: str | None = None) -> Content:
    """Sniff and open the content of `stream`, read sequentially from its start.

    gzip is recognised by its magic bytes, whatever the name or Content-Encoding says: GCS stores
    `Content-Encoding: gzip` objects compressed, and a `.gz` name over plain bytes is read as plain. An
    encoding other than gzip (br, deflate, ...) cannot be read. Raises `InputError`: UNSUPPORTED_ENCODING,
    EMPTY_INPUT, BINARY_CONTENT, or a gzip problem found in the first block.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding not in _ACCEPTED_ENCODINGS:
        raise InputError(UNSUPPORTED_ENCODING, (
            f"The object's Content-Encoding is {content_encoding!r}, which cannot be read: upload the file "
            "uncompressed or compressed with gzip."
        ))
    head = _read_upto(stream.read, len(GZIP_MAGIC))
    compressed = head == GZIP_MAGIC
    source: Read = _Prefixed(head, stream.read).read
    if compressed:
        source = _Gunzip(source, max_decompressed_bytes).read
    first, error = _probe(source, BINARY_PROBE_BYTES)
    if error is not None:
        if not first:
            raise error
        source = _Raising(error).read  # after the bytes before it, as for errors met later
    if not first:
        raise InputError(EMPTY_INPUT, "The file is empty: upload a file with text to embed.")
    codec, bom = "utf-8", b""
    for mark, name in _BOMS:
        if first.startswith(mark):
            codec, bom = name, mark
            break
    if codec == "utf-8" and b"\x00" in first:
        raise InputError(BINARY_CONTENT, _binary_message(first))
    return Content(read=_Prefixed(first[len(bom):], source).read, encoding=codec,
                   bom_length=len(bom), compressed=compressed)


def _binary_message(first: bytes) -> str:
    kind = ""
    if first.startswith(b"%PDF"):
        kind = " (it looks like a PDF)"
    elif first.startswith(b"PK\x03\x04"):
        kind = " (it looks like a ZIP archive, or a .docx or .xlsx file)"
    return (
        f"The file holds binary data, not text{kind}: upload plain text in UTF-8, or UTF-16/32 with a "
        "byte-order mark."
    )


def _decode_error(content: Content, offset: int) -> InputError:
    where = " of the decompressed content" if content.compressed else ""
    if content.encoding == "utf-8":
        return InputError(INVALID_UTF8, (
            f"The file is not valid UTF-8 at byte {offset}{where}: save it as UTF-8 and upload it again."
        ))
    return InputError(INVALID_ENCODING, (
        f"The file is not valid {content.encoding.upper()} at byte {offset}{where}: save it as UTF-8 and "
        "upload it again."
    ))


def skip(read: Read, count: int) -> Read:
    """`read` after its first `count` bytes, which are read and dropped. Raises ValueError when it has
    fewer: the object is not the one a resume position was taken from."""
    left = count
    while left > 0:
        block = read(min(left, SKIP_SIZE))
        if not block:
            raise ValueError(f"the content ends {left} bytes before the resume offset {count}: resume only "
                             "the object generation the position was taken from")
        if len(block) > left:  # a reader may return more than asked
            return _Prefixed(block[left:], read).read
        left -= len(block)
    return read


def iter_text(content: Content, size: int = READ_SIZE, offset: int = 0) -> Iterator[str]:
    """The decoded text, block by block, line endings as in the file; `offset` bytes of content (after
    the byte-order mark, at a character's start) were consumed before `content.read` gives the rest.

    At the first undecodable byte, yields the text before it, then raises `InputError` (INVALID_UTF8, or
    INVALID_ENCODING for UTF-16/32) giving the byte's offset in the (decompressed) file.
    """
    decoder = codecs.getincrementaldecoder(content.encoding)("strict")
    offset += content.bom_length  # bytes handed to the decoder so far
    while True:
        data = content.read(size)
        final = not data
        pending = decoder.getstate()[0]
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            good = (pending + data)[:exc.start]
            if good:
                yield good.decode(content.encoding)
            raise _decode_error(content, offset - len(pending) + exc.start) from None
        if text:
            yield text
        if final:
            return
        offset += len(data)


def utf8_reader(content: Content) -> Read:
    """The content as UTF-8 bytes: as is for UTF-8, transcoded block by block from UTF-16/32."""
    if content.encoding == "utf-8":
        return content.read
    blocks = iter_text(content)

    def read(size: int) -> bytes:
        for text in blocks:
            return text.encode("utf-8")
        return b""

    return read


class TooLong(NamedTuple):
    """A line longer than the limit, discarded as it streamed: its size and its number of `"`."""

    size: int
    quotes: int


_LINE_END = re.compile(rb"(\r\n|\r|\n)")


def iter_lines(read: Read, max_bytes: int) -> LineReader:
    """The lines of `read` from its start (see `LineReader`)."""
    return LineReader(read, max_bytes)


class LineReader:
    """The lines of `read`, without their ends (LF, CRLF or a lone CR), each at most `max_bytes`.

    A longer line is never held whole: it is dropped block by block and reported as `TooLong`. Yields one
    item per line, so the caller's count is the line number. Between two lines, `offset` is the number of
    bytes of `read` consumed through the end of the last line given (its line end included, the bytes
    consumed before this reader started counted too) and `after_cr` tells whether that end was a lone CR:
    a reader started there with `after_cr` drops an LF that comes first, the rest of a CRLF.
    """

    def __init__(self, read: Read, max_bytes: int, *, offset: int = 0, after_cr: bool = False):
        self._read = read
        self._max = max_bytes
        self.offset = offset
        self.after_cr = after_cr
        self._lines = self._run()

    def __iter__(self) -> LineReader:
        return self

    def __next__(self) -> bytes | TooLong:
        return next(self._lines)

    def _run(self) -> Iterator[bytes | TooLong]:
        limit = self._max
        tail = b""  # the start of an unfinished line
        skipping: TooLong | None = None  # the unfinished line is too long and being dropped
        pending = 0  # bytes of the unfinished line consumed so far
        pending_cr = self.after_cr  # the last block ended with CR: a LF opening the next belongs to it
        while True:
            block = self._read(READ_SIZE)
            if not block:
                break
            if pending_cr and block.startswith(b"\n"):
                block = block[1:]
                self.offset += 1  # the rest of the last line's end
            pending_cr = block.endswith(b"\r")
            if b"\r" in block:
                parts = _LINE_END.split(block)
                pieces, ends = parts[0::2], parts[1::2]
            else:
                pieces, ends = block.split(b"\n"), None
            *complete, last = pieces
            for index, piece in enumerate(complete):
                end = b"\n" if ends is None else ends[index]
                self.offset += pending + len(piece) + len(end)
                self.after_cr = end == b"\r"
                pending = 0
                if skipping is not None:
                    line: bytes | TooLong = TooLong(skipping.size + len(piece), skipping.quotes + piece.count(b'"'))
                    skipping = None
                else:
                    if tail:
                        piece, tail = tail + piece, b""
                    line = TooLong(len(piece), piece.count(b'"')) if len(piece) > limit else piece
                yield line
            pending += len(last)
            if skipping is not None:
                skipping = TooLong(skipping.size + len(last), skipping.quotes + last.count(b'"'))
            elif last:
                tail += last
                if len(tail) > limit:
                    skipping, tail = TooLong(len(tail), tail.count(b'"')), b""
        self.offset += pending
        self.after_cr = False
        if skipping is not None:
            yield skipping
        elif tail:
            yield tail

