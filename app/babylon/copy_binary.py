"""Incremental decoder of PostgreSQL's binary COPY format.

Binary COPY sends each field as a length-prefixed byte string, so the JSON text of
`"stepsJson"` arrives exactly as stored: no escaping to undo (text COPY doubles every
backslash) and no per-row protocol overhead (a cursor's FETCH round trips). The server's
wire format: an 11-byte signature, flags and a header extension, then per row an int16
field count and, per field, an int32 length (-1 for NULL) and the bytes; an int16 -1 ends it.
"""

from __future__ import annotations

import struct

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER_FIXED = len(SIGNATURE) + 8  # signature, int32 flags, int32 extension length
_INT32 = struct.Struct("!i").unpack_from
_INT16 = struct.Struct("!h").unpack_from
_INT16_INT32 = struct.Struct("!hi").unpack_from

Row = tuple[bytes | None, ...]


class CopyFormatError(Exception):
    """The stream is not binary COPY data (a bug or a protocol change, never user input)."""


class BinaryCopyDecoder:
    """Feed chunks as they arrive; get back the rows that are complete so far."""

    __slots__ = ("_buffer", "_done", "_header_read", "rows_decoded")

    def __init__(self) -> None:
        self._buffer = b""
        self._header_read = False
        self._done = False
        self.rows_decoded = 0

    @property
    def finished(self) -> bool:
        """True once the trailer (field count -1) has been read."""
        return self._done

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Row]:
        # asyncpg hands over bytearrays: copy once to bytes so field slices are hashable bytes
        data = chunk if type(chunk) is bytes else bytes(chunk)
        buf = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buf)
        if not self._header_read:
            if end < _HEADER_FIXED:
                self._buffer = buf
                return []
            if buf[: len(SIGNATURE)] != SIGNATURE:
                raise CopyFormatError("missing binary COPY signature")
            extension = _INT32(buf, len(SIGNATURE) + 4)[0]
            if end < _HEADER_FIXED + extension:
                self._buffer = buf
                return []
            pos = _HEADER_FIXED + extension
            self._header_read = True
        rows: list[Row] = []
        append = rows.append
        while pos + 6 <= end:
            nfields, length = _INT16_INT32(buf, pos)
            if nfields == 2:
                # the reader's rows (meta, steps): one struct call per field, no inner loop
                p = pos + 6
                if length < 0 or p + length + 4 > end:
                    if length < 0:
                        pass  # NULL first field: the general path below handles it
                    else:
                        break
                else:
                    first = buf[p : p + length]
                    p += length
                    second_length = _INT32(buf, p)[0]
                    p += 4
                    if second_length < 0:
                        append((first, None))
                        pos = p
                        continue
                    if p + second_length > end:
                        break
                    append((first, buf[p : p + second_length]))
                    pos = p + second_length
                    continue
            if nfields == -1:
                self._done = True
                pos += 2
                break
            p = pos + 2
            fields: list[bytes | None] = []
            complete = True
            for _ in range(nfields):
                if p + 4 > end:
                    complete = False
                    break
                length = _INT32(buf, p)[0]
                p += 4
                if length < 0:
                    fields.append(None)
                    continue
                if p + length > end:
                    complete = False
                    break
                fields.append(buf[p : p + length])
                p += length
            if not complete:
                break
            append(tuple(fields))
            pos = p
        else:
            # fewer than 6 bytes left: only the 2-byte trailer can be complete
            if pos + 2 <= end and _INT16(buf, pos)[0] == -1:
                self._done = True
                pos += 2
        self._buffer = buf[pos:] if pos < end else b""
        self.rows_decoded += len(rows)
        return rows

    def check_complete(self) -> None:
        """Raise if the stream ended in the middle of a row."""
        if self._buffer:
            raise CopyFormatError(f"binary COPY ended with {len(self._buffer)} undecoded bytes")
