"""The Image tab: Stable Diffusion text-to-image and image-to-image, a gallery of everything drawn, settings
restored from any PNG that carries AUTOMATIC1111 parameters.

Thin handlers: widgets -> ImageParams -> ctx.image.generate() -> widgets. No torch here.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines.image import (
    SAMPLER_NAMES,
    TINY_LABEL,
    TINY_SOURCE,
    ImageParams,
    defaults_for,
    lcm_applies,
    max_side_for,
    model_name,
    params_from_infotext,
    read_png_parameters,
)
from studio.errors import InputError, StudioError
from studio.models.estimate import Workload
from studio.models.specs import CATALOG, ModelSpec
from studio.security import require_loaded_or_owner
from studio.text import fmt_bytes
from studio.ui import messages as msg
from studio.ui.chat_tab import StopFlags, session_key
from studio.ui.models_tab import spec_from_form

IMAGE_PRECISIONS = ("fp16", "bf16", "fp32")
MODEL_HELP = "Model (pick one, or type a diffusers folder, a .safetensors checkpoint or a Hugging Face id)"
TINY_CHOICE = f"{TINY_LABEL}: offline, for trying the studio"


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The test pipeline, image models the manager knows, checkpoints in models/, then the recommended models."""
    choices: list[tuple[str, str]] = [(TINY_CHOICE, TINY_SOURCE)]
    for rec in ctx.manager.records():
        spec = ctx.manager.spec_for(rec.key)
        if rec.kind == "image" and spec is not None and model_name(spec) != TINY_SOURCE:
            choices.append((f"{rec.name} ({rec.state})", spec.source))
    models = ctx.paths.models
    if models.is_dir():
        for path in sorted(models.glob("**/*.safetensors")):
            if path.parent == models or (path.parent / "model_index.json").is_file():
                choices.append((f"{path.name} (single file)", str(path)))
        for index in sorted(models.glob("*/model_index.json")):
            if index.parent.name != "tiny-sd-pipeline":
                choices.append((f"{index.parent.name} (folder)", str(index.parent)))
    for entry in CATALOG:
        if entry.kind == "image":
            choices.append((f"{entry.label} — {entry.hub_id} ({entry.notes})", entry.hub_id))
    seen, unique = set(), []
    for label, value in choices:
        if value not in seen:
            seen.add(value)
            unique.append((label, value))
    return unique


def choice_for_model(choices: list[tuple[str, str]], name: str) -> str | None:
    """The picker's value for a PNG's "Model" field, or None. The field holds a Hub id, a folder's name or a
    checkpoint's file stem (as this studio and AUTOMATIC1111 write it), while the picker's values are Hub ids and
    full paths; a label ("SD-Turbo", "my-model (folder)") matches too."""
    name = (name or "").strip()
    if not name:
        return None
    for _label, value in choices:
        path = Path(value)
        local = path.is_absolute()  # a folder or a .safetensors file; else a Hub id or the test pipeline
        if name == value or (local and name == (path.stem if path.suffix == ".safetensors" else path.name)):
            return value
    for label, value in choices:
        if name in (label, label.split(" — ")[0], label.rsplit(" (", 1)[0]):
            return value
    return None


def resolve_spec(ctx: AppContext, choice: str | None, precision: str) -> ModelSpec:
    """The picker's value as a ModelSpec."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError("Pick an image model first.")
    if precision not in IMAGE_PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(IMAGE_PRECISIONS)} for image models.")
    if choice == TINY_SOURCE:
        return ctx.image.tiny_spec(precision)
    return spec_from_form(ctx, "image", choice, precision)


def _whole(value: Any, name: str) -> int:
    if value is None or value == "":
        raise InputError(f"{name} must be a whole number.")
    number = float(value)
    if number != int(number):
        raise InputError(f"{name} must be a whole number, not {number:g}.")
    return int(number)


def params_from(prompt, negative, sampler, steps, cfg, width, height, seed, size, count, init, strength):
    return ImageParams(
        prompt=(prompt or "").strip(),
        negative_prompt=(negative or "").strip(),
        sampler=sampler or SAMPLER_NAMES[0],
        steps=_whole(steps, "Steps"),
        cfg_scale=float(cfg if cfg is not None else 7),
        width=_whole(width, "Width"),
        height=_whole(height, "Height"),
        seed=_whole(seed, "Seed"),
        batch_size=_whole(size, "Batch size"),
        batch_count=_whole(count, "Batch count"),
        init_image=init or None,
        strength=float(strength if strength is not None else 0.75),
    )


def gallery_items(ctx: AppContext) -> list[tuple[str, str]]:
    items = []
    for path in ctx.image.gallery():
        m = re.match(r"(\d+)-(\d+)", path.name)
        items.append((str(path), f"{path.parent.name} #{m.group(1)} · seed {m.group(2)}" if m else path.name))
    return items


def selected_file(ctx: AppContext, item: Any) -> Path | None:
    """The outputs file a selected gallery item shows (the select event's value), or None. The page holds copies
    served from Gradio's cache, so the item's file name and its caption's day folder find the original; nothing
    outside the outputs folder is read, whatever the page sends."""
    if not isinstance(item, dict) or not isinstance(item.get("image"), dict):
        return None
    image = item["image"]
    name = Path(str(image.get("orig_name") or image.get("path") or "")).name
    if not name.endswith(".png") or name.startswith("."):
        return None
    root = ctx.image.outputs.resolve()
    day = str(item.get("caption") or "").split(" #")[0]
    for path in [root / day / name, *(p for p in ctx.image.gallery() if p.name == name)]:
        if path.is_file() and path.resolve().parent.parent == root:
            return path.resolve()
    return None


def connect_page_load(ctx: AppContext, app: gr.Blocks, tab: dict[str, gr.components.Component]) -> None:
    """Every page (re)load shows the gallery and the model picker as they are now, not as they were when the
    studio started: images drawn since (by another page or /v1), models loaded or copied into models/ since."""

    def on_load():
        return gallery_items(ctx), gr.Dropdown(choices=model_choices(ctx))

    app.load(on_load, None, [tab["gallery"], tab["model"]], api_name="image_page", queue=False, show_progress="hidden")


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    flags = StopFlags()
    choices = model_choices(ctx)
    first = TINY_SOURCE if ctx.device == "cpu" else "stabilityai/sd-turbo"
    precision_default = "fp16" if ctx.device == "cuda" else "fp32"
    start = defaults_for(resolve_spec(ctx, first, precision_default))
    with gr.Row():
        model = gr.Dropdown(
            choices=choices, value=first, allow_custom_value=True, label=MODEL_HELP, elem_id="image-model", scale=4
        )
        precision = gr.Dropdown(
            list(IMAGE_PRECISIONS), value=precision_default, label="Precision", elem_id="image-precision", scale=1
        )
        load_btn = gr.Button("Load", elem_id="image-load", scale=1)
    note = gr.Markdown(start.note, elem_id="image-note")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(
                label="Prompt", lines=3, placeholder="a lighthouse at dusk, oil painting", elem_id="image-prompt"
            )
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="image-negative")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="image-generate")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="image-stop")
            with gr.Accordion("Settings", open=True):
                with gr.Row():
                    sampler = gr.Dropdown(
                        list(SAMPLER_NAMES), value=start.sampler, label="Sampler", elem_id="image-sampler"
                    )
                    steps = gr.Slider(1, 150, value=start.steps, step=1, label="Steps", elem_id="image-steps")
                cfg = gr.Slider(
                    0, 30, value=start.cfg_scale, step=0.5, label="CFG scale (0-1 = off)", elem_id="image-cfg"
                )
                with gr.Row():
                    width = gr.Number(value=start.width, precision=0, step=8, label="Width", elem_id="image-width")
                    height = gr.Number(value=start.height, precision=0, step=8, label="Height", elem_id="image-height")
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="image-seed")
                    batch_size = gr.Number(value=1, precision=0, label="Batch size", elem_id="image-batch-size")
                    batch_count = gr.Number(value=1, precision=0, label="Batch count", elem_id="image-batch-count")
            with gr.Accordion("Image to image", open=False):
                init = gr.Image(
                    type="filepath", label="Init image (leave empty for text to image)", elem_id="image-init"
                )
                strength = gr.Slider(
                    0.01, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="image-strength"
                )
            with gr.Accordion("Restore settings from a PNG", open=False):
                restore_file = gr.File(
                    label="Drop a PNG made here or by AUTOMATIC1111 / Forge",
                    file_types=[".png"],
                    elem_id="image-restore",
                )
                restore_md = gr.Markdown(elem_id="image-restore-status")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="image-status")
            gallery = gr.Gallery(
                value=gallery_items(ctx),
                label="Images (this and earlier sessions, newest first)",
                columns=4,
                height=520,
                object_fit="contain",
                elem_id="image-gallery",
            )
            with gr.Row():
                refresh_btn = gr.Button("Refresh gallery", elem_id="image-refresh", scale=1)
                reuse_btn = gr.Button("Reuse the selected image's settings", elem_id="image-reuse", scale=2)
            selected_params = gr.Textbox(
                label="Parameters of the selected image", lines=4, interactive=False, elem_id="image-params"
            )
            selected_path = gr.State("")
    # the model a restore just switched to: the picker's change event then keeps the restored settings
    restored_model = gr.State(None)

    settings = [prompt, negative, sampler, steps, cfg, width, height, seed, strength]

    @msg.user_errors
    def apply_defaults(choice, prec, restored=None):
        if not choice:
            return [gr.update()] * 6 + [None]
        spec = resolve_spec(ctx, choice, prec)
        d = defaults_for(spec)
        text = d.note
        if model_name(spec) != TINY_SOURCE:
            try:
                text = (text + " " + ctx.manager.plan(spec).message).strip()
            except StudioError as exc:  # not downloaded yet, or unknown: the size is not known before loading
                text = (text + " " + exc.message).strip()
        if restored and restored == choice:  # switched by a restore: its settings stay
            return [gr.update()] * 5 + [text, None]
        return d.steps, d.cfg_scale, d.width, d.height, d.sampler, text, None

    @msg.user_errors
    def load(choice, prec, w, h, request: gr.Request, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - downloads
        spec = resolve_spec(ctx, choice, prec)
        require_loaded_or_owner(ctx.security, ctx.manager, spec, request)
        if model_name(spec) == TINY_SOURCE:
            ctx.image.ensure_tiny()
        ctx.image.check_available(spec)
        workload = Workload(width=_whole(w, "Width"), height=_whole(h, "Height"))
        plan = ctx.manager.plan(spec, workload)
        with ctx.manager.acquire(spec, workload):
            pass
        rec = next(r for r in ctx.manager.records() if r.key == spec.key)
        return f"{plan.message}\n\n{spec.name} is ready: {fmt_bytes(rec.measured_bytes)} measured."

    @msg.user_errors
    def check(choice, prec, p, n, smp, st, c, w, h, sd, bs, bc, init_img, strg) -> None:
        """Quick checks before the run is queued: a bad setting is refused with its message, nothing else moves."""
        spec = resolve_spec(ctx, choice, prec)
        params = params_from(p, n, smp, st, c, w, h, sd, bs, bc, init_img, strg)
        params.check_inputs(max_side_for(spec), spec.name, lcm_applies(spec))

    def generate(
        choice,
        prec,
        p,
        n,
        smp,
        st,
        c,
        w,
        h,
        sd,
        bs,
        bc,
        init_img,
        strg,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - a model not yet downloaded shows its download
    ):
        """Generator: the gallery grows batch by batch; the progress bar moves per step (the engine keeps the
        pipeline's own per-step tqdm bar out of it). A failure mid-run is reported in the status (and a warning) so
        the gallery keeps showing what was drawn."""
        try:
            spec = resolve_spec(ctx, choice, prec)
            require_loaded_or_owner(ctx.security, ctx.manager, spec, request)
            params = params_from(p, n, smp, st, c, w, h, sd, bs, bc, init_img, strg)
            stop = flags.event(session_key(request))
            stop.clear()
            loaded = any(r.key == spec.key and r.state == "loaded" for r in ctx.manager.records())
            yield gr.update(), "Starting…" if loaded else "Loading the model first…"

            def on_step(done: int, total: int) -> None:
                progress((min(done, total), total), desc="Denoising", unit="steps")

            for update in ctx.image.generate(spec, params, should_stop=stop.is_set, on_step=on_step):
                yield gallery_items(ctx), update.message
        except StudioError as exc:
            gr.Warning(str(exc))
            yield gallery_items(ctx), f"**Not drawn:** {exc}"
        except Exception as exc:  # noqa: BLE001 - the page gets one line; the console gets the traceback
            msg.log.exception("unexpected error while drawing")
            text = msg.UNEXPECTED.format(error=f"{type(exc).__name__}: {exc}"[:300])
            gr.Warning(text)
            yield gallery_items(ctx), f"**Not drawn:** {text}"

    def request_stop(request: gr.Request) -> None:
        flags.event(session_key(request)).set()  # ends after the current step

    def restore_values(text: str, choice, prec, current: ImageParams, path: str) -> list:
        restored = params_from_infotext(text, current)
        notes = list(restored.notes)
        p = restored.params
        values = [p.prompt, p.negative_prompt, p.sampler, p.steps, p.cfg_scale, p.width, p.height, p.seed, p.strength]
        new_model, switched = gr.update(), None
        current_name = _current_name(choice, prec)
        if restored.model and restored.model != current_name:
            found = choice_for_model(model_choices(ctx), restored.model)
            if found is None:
                notes.append(
                    f"It was drawn with {restored.model}, which is not in the model list: "
                    f"the model stays {current_name or choice or 'unset'}."
                )
            elif found != choice:
                new_model = switched = found
                notes.append(f"Switched the model to {restored.model}.")
        head = f"Restored the settings of {Path(path).name} (seed {p.seed})."
        return [*values, new_model, " ".join([head, *notes]), switched]

    def _current_name(choice, prec) -> str:
        try:
            return model_name(resolve_spec(ctx, choice, prec))
        except StudioError:
            return ""

    @msg.user_errors
    def restore(file, choice, prec, *current):
        if not file:
            return [gr.update()] * (len(settings) + 1) + ["", None]
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        text = read_png_parameters(path)
        base = replace(ImageParams(), **_current_fields(current))
        return restore_values(text, choice, prec, base, path)

    def _current_fields(current) -> dict[str, Any]:
        names = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height", "seed", "strength")
        fields = {}
        for name, value in zip(names, current, strict=True):
            if value is not None:
                fields[name] = int(value) if name in ("steps", "width", "height", "seed") else value
        return fields

    def select(evt: gr.SelectData):
        """The clicked image's own file (not the n-th of a fresh listing: the page's list may be older)."""
        path = selected_file(ctx, evt.value)
        if path is None:
            return "", ""
        try:
            return read_png_parameters(path), str(path)
        except StudioError as exc:
            return str(exc), ""

    @msg.user_errors
    def reuse(path, choice, prec, *current):
        if not path:
            raise InputError("Click an image in the gallery first.")
        base = replace(ImageParams(), **_current_fields(current))
        return restore_values(read_png_parameters(path), choice, prec, base, path)

    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    light = {"queue": False, "show_progress": "hidden"}
    quick = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
    gen_inputs = [
        model,
        precision,
        prompt,
        negative,
        sampler,
        steps,
        cfg,
        width,
        height,
        seed,
        batch_size,
        batch_count,
    ]
    run_inputs, run_outputs = [*gen_inputs, init, strength], [gallery, status]
    drawing = {"show_progress_on": [status], **gpu}  # the gallery stays visible while a run draws
    generate_btn.click(check, run_inputs, None, api_name="image_check", **quick).success(
        generate, run_inputs, run_outputs, api_name="image_generate", **drawing
    )
    prompt.submit(check, run_inputs, None, api_visibility="private", **quick).success(
        generate, run_inputs, run_outputs, api_visibility="private", **drawing
    )
    stop_btn.click(request_stop, None, None, api_name="image_stop", **quick)
    model.change(
        apply_defaults,
        [model, precision, restored_model],
        [steps, cfg, width, height, sampler, note, restored_model],
        api_name="image_model",
        **quick,
    )
    load_btn.click(load, [model, precision, width, height], [note], api_name="image_load", **gpu)
    restore_outputs = [*settings, model, restore_md, restored_model]
    restore_file.upload(
        restore, [restore_file, model, precision, *settings], restore_outputs, api_name="image_restore", **quick
    )
    refresh_btn.click(lambda: gallery_items(ctx), None, [gallery], api_name="image_gallery", **light)
    gallery.select(select, None, [selected_params, selected_path], api_name="image_select", **light)
    reuse_btn.click(
        reuse, [selected_path, model, precision, *settings], restore_outputs, api_name="image_reuse", **quick
    )
    return {
        "model": model,
        "precision": precision,
        "prompt": prompt,
        "negative": negative,
        "generate": generate_btn,
        "stop": stop_btn,
        "sampler": sampler,
        "steps": steps,
        "cfg": cfg,
        "width": width,
        "height": height,
        "seed": seed,
        "batch_size": batch_size,
        "batch_count": batch_count,
        "init": init,
        "strength": strength,
        "restore": restore_file,
        "gallery": gallery,
        "status": status,
    }
