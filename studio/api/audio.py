"""OpenAI-compatible speech-to-text on the studio's own server: POST /v1/audio/transcriptions (and /translations).

Multipart form as OpenAI takes it: `file` (any audio ffmpeg decodes), `model`, `language`, `prompt`,
`response_format` (json | text | srt | vtt | verbose_json), `temperature` (0 = start greedy and fall back to
warmer temperatures, as OpenAI does; above 0 = that temperature only) and `timestamp_granularities[]`
(segment, word). The official client works unchanged:

    client.audio.transcriptions.create(model="whisper-1", file=open("talk.mp3", "rb"), response_format="srt")

Model ids: "whisper-1" (the offline starter, or else the speech model used last), the starter's id
"whisper-tiny.en", and the speech models the studio holds (loaded or parked). Like the chat routes, the API never
loads an arbitrary path or name. Transcripts are written to outputs/transcripts/ like the Speech tab's. Errors
use OpenAI's shape (see studio/api/openai.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi
from fastapi.responses import JSONResponse, PlainTextResponse

from studio.api.disconnect import run_while_connected
from studio.api.openai import ApiError, api_error
from studio.engines.audio import FfmpegMissing
from studio.engines.speech import LANGUAGES, SpeechParams, Transcript
from studio.engines.subtitles import safe_stem, save_transcript, to_srt, to_vtt
from studio.errors import ModelLoadError
from studio.models.records import LOADED, PARKED
from studio.models.specs import ModelSpec

if TYPE_CHECKING:
    from studio.context import AppContext

log = logging.getLogger(__name__)
DEFAULT_MODEL = "whisper-1"  # what OpenAI's examples send
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
MAX_UPLOAD_BYTES = 2 * 1024**3  # when the context sets no limit (OpenAI's own is 25 MB)


def served_speech_models(ctx: AppContext) -> dict[str, ModelSpec]:
    """Model id -> spec: the starter (also as whisper-1), then loaded or parked speech models, most recent first."""
    served: dict[str, ModelSpec] = {}
    held = [spec for _, spec in ctx.manager.models("speech", (LOADED, PARKED))]
    try:
        from studio.models.speech_starter import STARTER_NAME, starter_spec

        starter = starter_spec(ctx.device)
    except ModelLoadError:
        starter = None
    if starter is not None:
        served[DEFAULT_MODEL] = starter
        served[STARTER_NAME] = starter
    elif held:
        served[DEFAULT_MODEL] = held[0]
    for spec in held:
        served.setdefault(spec.name, spec)
        served.setdefault(spec.key, spec)
    return served


def resolve_speech_model(ctx: AppContext, model_id: str) -> ModelSpec:
    served = served_speech_models(ctx)
    if model_id in served:
        return served[model_id]
    names = ", ".join(k for k in served if "#" not in k) or "none"
    raise ApiError(
        404,
        f"The speech model '{model_id}' is not available in ML Studio (available: {names}). Load others in the "
        "Speech or Models tab first.",
        param="model",
        code="model_not_found",
    )


def _text_field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be a text field, not a file.", param=name)
    return value.strip()


def parse_form(form: Any, task: str) -> tuple[str, SpeechParams, str, set[str]]:
    """(model id, params, response format, timestamp granularities) from the form; ApiError (400) if wrong."""
    model = _text_field(form, "model") or DEFAULT_MODEL
    fmt = _text_field(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise ApiError(
            400, f"'response_format' must be one of {', '.join(FORMATS)}, not '{fmt}'.", param="response_format"
        )
    granularities = {
        g.strip() for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    }
    granularities.discard("")
    unknown = granularities - set(GRANULARITIES)
    if unknown:
        raise ApiError(
            400,
            f"'timestamp_granularities' may hold segment and word, not {', '.join(sorted(unknown))}.",
            param="timestamp_granularities",
        )
    if granularities and fmt != "verbose_json":
        raise ApiError(
            400, "'timestamp_granularities' needs response_format 'verbose_json'.", param="timestamp_granularities"
        )
    raw_temperature = _text_field(form, "temperature") or "0"
    try:
        temperature = float(raw_temperature)
    except ValueError:
        raise ApiError(
            400, f"'temperature' must be a number from 0 to 1, not '{raw_temperature}'.", param="temperature"
        ) from None
    language = _text_field(form, "language") or ""
    if language and language.lower() not in LANGUAGES and language.lower() not in LANGUAGES.values():
        raise ApiError(
            400, f"'language' must be an ISO-639-1 code such as en or de, not '{language}'.", param="language"
        )
    params = SpeechParams(
        language=language,
        task=task,
        initial_prompt=_text_field(form, "prompt") or "",
        temperature=temperature,
        temperature_fallback=temperature == 0,
        word_timestamps="word" in granularities,
    )
    try:
        params.check_inputs()
    except Exception as exc:  # noqa: BLE001 - InputError, turned into a 400 naming the problem
        raise api_error(exc) from None
    return model, params, fmt, granularities


def response_body(transcript: Transcript, fmt: str, granularities: set[str]) -> fastapi.Response:
    if fmt == "text":
        return PlainTextResponse(transcript.text + ("\n" if transcript.text else ""))
    if fmt == "srt":
        return PlainTextResponse(to_srt(transcript.segments))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(transcript.segments), media_type="text/vtt")
    if fmt == "json":
        return JSONResponse({"text": transcript.text})
    body: dict[str, Any] = {
        "task": "translate" if transcript.task == "translate" else "transcribe",
        "language": LANGUAGES.get(transcript.language, transcript.language),
        "duration": transcript.duration,
        "text": transcript.text,
    }
    if "word" not in granularities or "segment" in granularities:
        body["segments"] = [
            {
                "id": s.id,
                "seek": int(s.start * 100),
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in transcript.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": float(w.start), "end": float(w.end)}
            for s in transcript.segments
            for w in s.words
        ]
    return JSONResponse(body)


async def _save_upload(upload: Any, folder: Path, limit: int) -> Path:
    """Copy the uploaded file to `folder`, keeping its name's extension; over `limit` bytes is a 413."""
    name = Path(getattr(upload, "filename", "") or "audio").name
    suffix = re.sub(r"[^A-Za-z0-9]", "", Path(name).suffix)[:10]  # a NUL or a slash would break open()
    target = folder / (f"{safe_stem(name)}.{suffix}" if suffix else safe_stem(name))
    size = 0
    with open(target, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"The file is larger than {limit / 1024**2:.0f} MB.", param="file")
            out.write(chunk)
    return target


def register(app: fastapi.FastAPI, ctx: AppContext) -> None:
    """Add POST /v1/audio/transcriptions and /v1/audio/translations to `app`."""

    async def handle(request: fastapi.Request, task: str) -> fastapi.Response:
        tmp = Path(tempfile.mkdtemp(prefix="studio-audio-"))
        try:
            try:
                form = await request.form(max_files=1, max_fields=32)
            except Exception as exc:  # noqa: BLE001 - not multipart, or a broken body
                raise ApiError(
                    400, f"Send the audio as multipart/form-data with a 'file' field ({type(exc).__name__})."
                ) from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "'file' is required: the audio file to transcribe.", param="file")
            model_id, params, fmt, granularities = parse_form(form, task)
            spec = resolve_speech_model(ctx, model_id)
            limit = getattr(getattr(ctx, "security", None), "max_upload_bytes", None) or MAX_UPLOAD_BYTES
            path = await _save_upload(upload, tmp, limit)
            name = Path(upload.filename or path.name).name
            transcript = await run_while_connected(  # a client that leaves ends it after its current segment
                request,
                lambda should_stop: ctx.speech.complete(spec, path, params, source_name=name, should_stop=should_stop),
                lambda: log.info("audio API: %s: the client left; stopping", name),
            )
            if not transcript.no_speech:
                await asyncio.to_thread(save_transcript, transcript, ctx.paths.outputs)
            log.info(
                "audio API: %s: %.1f s of audio in %.1f s with %s",
                name,
                transcript.duration,
                transcript.seconds,
                spec.name,
            )
            return response_body(transcript, fmt, granularities)
        except FfmpegMissing as exc:
            return ApiError(500, str(exc), code="ffmpeg_missing").response()
        except Exception as exc:  # noqa: BLE001 - every failure answers in OpenAI's shape
            return api_error(exc).response()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: fastapi.Request) -> fastapi.Response:
        return await handle(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: fastapi.Request) -> fastapi.Response:
        return await handle(request, "translate")
