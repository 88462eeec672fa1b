"""``/v1/audio/transcriptions`` and ``/v1/audio/translations`` as vLLM 0.32.0 answers
them (``vllm/entrypoints/speech_to_text/{transcription,translation}/{api_router,protocol}.py``
and ``base/serving.py``): a multipart form (``file`` required; ``model``, ``language``,
``prompt``, ``response_format`` …), a JSON body even for ``response_format=text`` (the
router ``model_dump``s every non-streaming answer), a transcription's ``usage`` the audio's
duration in whole seconds rounded up, a translation's no usage at all.

Real vLLM serves these only for a speech-to-text model (Whisper and kin). The fake does not
decode audio: it takes the upload as 16 kHz 16-bit mono PCM (``BYTES_PER_SECOND``) and
hears one word a second, at least one. Streaming transcriptions are not faked.
"""

from __future__ import annotations

import email.parser
import email.policy
import math
from typing import Any

from aiohttp import web

from .behaviour import BEHAVIOUR_KEY
from .delivery import injected_failure, json_response
from .errors import ApiError, check_model, error_body, one_error
from .tokens import completion_text

BYTES_PER_SECOND = 32_000
_FORMATS = ("text", "json", "verbose_json", "diarized_json")


def audio_seconds(size: int) -> int:
    return math.ceil(size / BYTES_PER_SECOND)


def transcript(size: int) -> str:
    return completion_text(max(1, audio_seconds(size))).strip()


def _form(request: web.Request, raw: bytes) -> dict[str, Any]:
    """The multipart fields: bytes for a file, text otherwise. Parsed from the bytes the
    middleware already read (aiohttp's post() would find the stream drained)."""
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, Any] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            filename = part.get_filename()
            fields[name] = payload if filename is not None else payload.decode()
    return fields


async def _speech_to_text(request: web.Request, task: str) -> web.Response:
    beh = request.app[BEHAVIOUR_KEY]
    await injected_failure(beh)
    form = _form(request, await request.read())
    if not isinstance(form.get("file"), bytes):
        raise one_error("missing", ("body", "file"), "Field required", None)
    check_model(form, beh)
    response_format = form.get("response_format", "json")
    if response_format not in _FORMATS:
        formats = "`text`, `json`, `verbose_json` or `diarized_json`"
        message = f"Currently only support response_format: {formats}"
        raise ApiError(400, error_body(message))
    if response_format != "json" and response_format != "text":
        # Depends on the model (Whisper has segment timestamps); the fake has none.
        model = form.get("model") or beh.models[0]
        raise ApiError(400, error_body(f"Currently do not support {response_format} for {model}"))
    size = len(form["file"])
    if task == "translate":
        return json_response({"text": transcript(size)})
    usage = {"type": "duration", "seconds": audio_seconds(size)}
    return json_response({"text": transcript(size), "usage": usage})


async def transcriptions(request: web.Request) -> web.Response:
    return await _speech_to_text(request, "transcribe")


async def translations(request: web.Request) -> web.Response:
    return await _speech_to_text(request, "translate")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)
