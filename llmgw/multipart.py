"""The one field the gateway reads of a multipart upload (an audio file for
transcription): its `model`, for the key's allowed models and for routing. The upload
itself goes upstream as the bytes received: the parts are found by searching the body,
never copied (a file of tens of megabytes is held once)."""

from __future__ import annotations

from email.message import Message

_HEADERS_END = b"\r\n\r\n"


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` Content-Type; None for anything else."""
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        return None
    boundary = header.get_param("boundary")
    return boundary.encode("latin-1") if isinstance(boundary, str) and boundary else None


def text_field(body: bytes, boundary: bytes, name: str, limit: int = 1024) -> str | None:
    """The value of the form's text field `name` (at most `limit` bytes); None when the
    form has no such field, or it is no short UTF-8 text."""
    delimiter = b"--" + boundary
    wanted = f'name="{name}"'.encode()
    start = body.find(delimiter)
    while start >= 0:
        headers_start = start + len(delimiter)
        if body.startswith(b"--", headers_start):
            return None  # the closing delimiter: no more parts
        headers_end = body.find(_HEADERS_END, headers_start)
        if headers_end < 0:
            return None
        following = body.find(b"\r\n" + delimiter, headers_end)
        if following < 0:
            return None
        disposition = _disposition(body[headers_start:headers_end])
        if disposition is not None and wanted in disposition and b"filename=" not in disposition:
            value = body[headers_end + len(_HEADERS_END) : following]
            if len(value) > limit:
                return None
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
        start = following + 2
    return None


def _disposition(headers: bytes) -> bytes | None:
    for line in headers.split(b"\r\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() == b"content-disposition":
            return value
    return None
