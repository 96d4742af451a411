"""Images for llama.cpp chat: a GGUF model's projector (mmproj) opened through llama.cpp's mtmd library, the prompt of
a conversation with images, and its evaluation before the reply is sampled.

The prompt is the model's own chat template (GGUF metadata) with llama.cpp's media marker where each image goes
(before its message's text); mtmd splits it into text chunks and image chunks, which is what `VisionPrompt` holds the
ids of (-1 for each image token, so that no later text prompt matches the image positions of the KV cache).
`evaluate` runs the text chunks through the language model and the image chunks through the projector into the KV
cache; the chat engine's sampling loop then starts from the cached prompt. No gradio here; llama_cpp is imported in
the functions.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import InputError, ModelLoadError
from studio.models.gguf_vision import ProjectorInfo

IMAGE_ID = -1  # what an image token is in VisionPrompt's ids and in the model's cached input ids
# mtmd_tokenize's return codes
_TOKENIZE_ERRORS = {1: "the number of images does not match the media markers", 2: "an image could not be processed"}


@dataclass
class Projector:
    """An open mtmd context: the projector file bound to a loaded language model."""

    ctx: Any
    info: ProjectorInfo

    @property
    def path(self) -> Path:
        return self.info.path

    def close(self) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        if self.ctx is not None:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None


def open_projector(llm: Any, info: ProjectorInfo, *, threads: int, use_gpu: bool, flash_attn: bool) -> Projector:
    """The projector `info` bound to the Llama object `llm`, or a ModelLoadError with llama.cpp's reason."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    params = mtmd.mtmd_context_params_default()
    params.use_gpu = use_gpu
    params.print_timings = False
    params.n_threads = threads
    params.warmup = False
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    ctx = mtmd.mtmd_init_from_file(str(info.path).encode(), llm.model, params)
    if not ctx:
        raise ModelLoadError(
            f"{info.path.name}: llama.cpp could not open the vision projector (projector type "
            f"{info.projector_type!r}).",
            "The projector may belong to another model, or this llama.cpp build may not know its type; use the "
            "mmproj file published with the model, or update llama-cpp-python.",
        )
    projector = Projector(ctx, info)
    if not mtmd.mtmd_support_vision(ctx):
        projector.close()
        raise ModelLoadError(f"{info.path.name} has no vision encoder (an audio projector?).", "Pick a vision mmproj.")
    return projector


def marker() -> str:
    import llama_cpp.mtmd_cpp as mtmd

    return mtmd.mtmd_default_marker().decode("utf-8")


class VisionPrompt(list):
    """The ids of a prompt with images (IMAGE_ID for each image token), with what `evaluate` needs to run it: the
    templated text with its media markers, the images, and whether mtmd adds the BOS token."""

    def __init__(self, ids: list[int], text: str, pictures: list[Any], add_special: bool) -> None:
        super().__init__(ids)
        self.text = text
        self.pictures = pictures
        self.add_special = add_special
        self.image_tokens = sum(1 for t in ids if t == IMAGE_ID)

    @property
    def images(self) -> int:
        return len(self.pictures)


@contextlib.contextmanager
def _chunks(projector: Projector, text: str, pictures: list[Any], add_special: bool) -> Iterator[Any]:
    """mtmd's input chunks of `text` (one media marker per picture) and the pictures (PIL RGB images)."""
    import llama_cpp.mtmd_cpp as mtmd

    bitmaps = []
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        for img in pictures:
            data = img.convert("RGB").tobytes()
            bitmap = mtmd.mtmd_bitmap_init(img.width, img.height, (ctypes.c_uint8 * len(data)).from_buffer_copy(data))
            if not bitmap:
                raise InputError(f"llama.cpp could not take a {img.width}x{img.height} image.")
            bitmaps.append(bitmap)
        encoded = text.encode("utf-8")
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = encoded, len(encoded), add_special, True
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        rc = mtmd.mtmd_tokenize(projector.ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
        if rc != 0:
            raise InputError(
                f"llama.cpp could not split the message into text and images: {_TOKENIZE_ERRORS.get(rc, rc)}.",
                "Leave the media marker text (<__media__>) out of the message.",
            )
        yield chunks
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)


def _walk(chunks: Any) -> Iterator[tuple[Any, list[int] | None, int]]:
    """(chunk, its text tokens or None for an image chunk, its token count) for each chunk."""
    import llama_cpp.mtmd_cpp as mtmd

    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            yield chunk, [ptr[j] for j in range(n.value)], n.value
        else:
            yield chunk, None, int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))


def prompt_ids(lm: Any, formatter: Any, messages: list[dict], tools: list | None) -> VisionPrompt:
    """The conversation through the model's chat template, each message's images (media markers) before its text,
    split by mtmd into text tokens and image tokens."""
    mark = marker()
    pictures, turns = [], []
    for m in messages:
        images = list(m.get("images") or ())
        turn = {k: v for k, v in m.items() if k != "images"}
        if images:
            if mark in str(m.get("content") or ""):
                raise InputError(f"A message holds llama.cpp's media marker {mark} as text; leave it out.")
            turn["content"] = mark * len(images) + "\n" + str(m.get("content") or "")
            pictures.extend(images)
        turns.append(turn)
    try:
        result = formatter(messages=turns, tools=tools)
    except Exception as exc:  # noqa: BLE001 - a template may raise_exception() on roles it does not take
        raise InputError(f"{lm.path.name}'s chat template refused the conversation: {exc}") from None
    text, add_special = result.prompt, not result.added_special
    if text.count(mark) != len(pictures):
        raise InputError(f"{lm.path.name}'s chat template dropped some images (it writes {text.count(mark)} of them).")
    ids: list[int] = []
    with _chunks(lm.vision, text, pictures, add_special) as chunks:
        for _chunk, tokens, n in _walk(chunks):
            ids.extend(tokens if tokens is not None else [IMAGE_ID] * n)
    return VisionPrompt(ids, text, pictures, add_special)


def evaluate(lm: Any, prompt: VisionPrompt) -> list[int]:
    """Run the prompt into a fresh KV cache (text through the model, images through the projector) and return the
    cached ids, which llama-cpp-python's generate then finds cached and samples from at once."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    llm = lm.llm
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    with _chunks(lm.vision, prompt.text, prompt.pictures, prompt.add_special) as chunks:
        for chunk, tokens, n in _walk(chunks):
            if llm.n_tokens + n > llm.n_ctx():
                raise InputError(f"The prompt passes the {llm.n_ctx()}-token context with its images.")
            if tokens is not None:
                llm.eval(tokens)
                continue
            start, after = llm.n_tokens, llama_cpp.llama_pos(0)
            rc = mtmd.mtmd_helper_eval_chunk_single(
                lm.vision.ctx, llm._ctx.ctx, chunk, start, 0, llm.n_batch, False, ctypes.byref(after)
            )
            if rc != 0:  # the encoder or the decode of the image embeddings failed (no room for them)
                raise MemoryError(f"llama.cpp could not evaluate an image (mtmd error {rc})")
            llm.input_ids[start : after.value] = IMAGE_ID
            llm.n_tokens = after.value
            llm._requires_eval = True  # no logits to sample from until a text chunk follows
    return llm.input_ids[: llm.n_tokens].tolist()


def image_token_count(lm: Any, width: int, height: int) -> int:
    """Context tokens mtmd gives one width x height image on the loaded model."""
    from PIL import Image

    with _chunks(lm.vision, marker(), [Image.new("RGB", (width, height))], False) as chunks:
        return sum(n for _chunk, tokens, n in _walk(chunks) if tokens is None)
