"""One export from start to end: resolve and check the source, check the disk, merge (a run), convert to F16,
quantize, write the Modelfile. Every check that can fail cheaply runs before anything heavy is loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from studio.errors import InputError
from studio.export import files
from studio.export.convert import ExportCancelled, LazyTensor, folder_tensors, write_gguf
from studio.export.modelfile import chat_format, ollama_command, render, sampling_defaults
from studio.export.quantize import BITS, check_offered, quantize
from studio.export.request import FORMAT_LABELS, QUANTIZED, ExportRequest, ExportResult, Progress
from studio.export.sources import ExportSource, resolve

VOCAB_ALLOWANCE = 16 * 1024**2  # bytes of tokenizer metadata (a 150k-token vocabulary with merges is ~10 MB)


def default_out_dir(source: ExportSource, data_dir: Path) -> Path:
    """RUN_DIR/export/ for a run, DATA_DIR/outputs/exports/ for anything else."""
    return source.run.path / "export" if source.run is not None else Path(data_dir) / "outputs" / "exports"


def export(
    request: ExportRequest,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExportResult:
    """Write `request.source` as a GGUF file (and its Modelfile); `progress(stage, fraction)` is called as the
    merge, the conversion and the quantization go; `should_stop()` ends it early (between tensors)."""
    started = time.monotonic()
    report = progress or (lambda stage, fraction: None)
    stop = should_stop or (lambda: False)
    fmt = request.format
    source = resolve(request.source, request.data_dir)
    if fmt == "lora" and source.run is None:
        raise InputError(
            f"lora exports a fine-tune run's adapter; {request.source} is a model, not a run.",
            "Give a run folder, or export the model to f16, q8_0, q4_k_m or q5_k_m.",
        )
    if fmt in QUANTIZED:
        check_offered(fmt)
    out_dir = request.out_dir or default_out_dir(source, request.data_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the export folder {out_dir} ({exc.strerror or exc}).") from None
    files.remove_partials(out_dir)
    stem = request.name or f"{source.label}-{FORMAT_LABELS[fmt]}"
    target = out_dir / f"{stem}.gguf"
    if fmt == "lora":
        return _export_lora(source, target, report, started)

    from studio.models.formats import folder_info

    info = folder_info(source.model_folder)
    adapter_bytes = _adapter_bytes(source)
    f16_bytes = info.params * 2 + VOCAB_ALLOWANCE
    final_bytes = int(info.params * BITS[fmt] / 8) + VOCAB_ALLOWANCE
    need = f16_bytes + (final_bytes if fmt in QUANTIZED else 0)  # the F16 file exists while it is quantized
    files.check_space(out_dir, need, f"the {FORMAT_LABELS[fmt]} export")
    if stop():
        raise ExportCancelled("The export was stopped.")
    tensors = _tensors(source, info, report)
    write = {
        "arch": source.arch,
        "tensors": tensors,
        "tokenizer_folder": source.model_folder,
        "name": source.label,
        "base_name": source.base_label,
        "progress": report,
        "should_stop": stop,
    }
    notes: tuple[str, ...] = ()
    if fmt == "f16":
        with files.staged(target) as tmp:
            facts = write_gguf(tmp, **write)
    else:
        intermediate = files.partial_path(out_dir / f"{stem}-F16.gguf")
        try:
            with files.disk_full_is_clear(target):
                facts = write_gguf(intermediate, **write)
            del tensors, write  # a merged model's weights are not needed any more
            if stop():
                raise ExportCancelled("The export was stopped.")
            with files.staged(target) as tmp:
                notes = quantize(intermediate, tmp, fmt, expected_bytes=final_bytes, progress=report)
        finally:
            intermediate.unlink(missing_ok=True)
    chat = chat_format(facts.chat_template, facts.special)
    modelfile = out_dir / f"{stem}.Modelfile"
    files.write_text(modelfile, render(target.name, chat, sampling_defaults(source.model_folder)))
    return ExportResult(
        path=target,
        format=fmt,
        bytes=target.stat().st_size,
        source_bytes=info.stored_bytes + adapter_bytes,
        modelfile=modelfile,
        ollama_command=ollama_command(stem, modelfile),
        seconds=time.monotonic() - started,
        warnings=facts.warnings + notes,
    )


def _tensors(source: ExportSource, info, report: Progress) -> dict[str, LazyTensor]:
    """The weights to convert: the folder's, read lazily, or for a run its base with the adapter merged in (in
    memory, on the CPU, at the base's stored precision)."""
    if source.run is None:
        return folder_tensors(source.model_folder)
    from studio.training.lora import merged_model

    report("merge", 0.0)
    stored = max(info.dtypes, key=info.dtypes.get) if info.dtypes else "F32"
    precision = {"BF16": "bf16", "F16": "fp16"}.get(stored.upper(), "fp32")
    model = merged_model(source.run, device="cpu", precision=precision)
    tensors = {name: LazyTensor.of(t.detach()) for name, t in model.state_dict().items()}
    report("merge", 1.0)
    return tensors


def _export_lora(source: ExportSource, target: Path, report: Progress, started: float) -> ExportResult:
    from studio.export.lora import write_gguf_lora

    assert source.run is not None
    adapter = source.run.adapter
    adapter_bytes = _adapter_bytes(source)
    files.check_space(target.parent, adapter_bytes * 2, "the GGUF LoRA export")  # F32 tensors: at most 2x bf16
    with files.staged(target) as tmp:
        write_gguf_lora(tmp, source.arch, adapter, name=source.label, base_name=source.base_label, progress=report)
    return ExportResult(
        path=target,
        format="lora",
        bytes=target.stat().st_size,
        source_bytes=adapter_bytes,
        modelfile=None,
        ollama_command=None,
        seconds=time.monotonic() - started,
    )


def _adapter_bytes(source: ExportSource) -> int:
    if source.run is None:
        return 0
    weights = source.run.adapter / "adapter_model.safetensors"
    return weights.stat().st_size if weights.is_file() else 0
