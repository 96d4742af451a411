"""The Image tab: Stable Diffusion text-to-image and image-to-image, a gallery of everything drawn, settings
restored from any PNG that carries AUTOMATIC1111 parameters.

Thin handlers: widgets -> ImageParams -> ctx.image.generate() -> widgets. No torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines.image import TINY_LABEL, TINY_SOURCE, defaults_for, lcm_applies, max_side_for, model_name
from studio.engines.image_params import SAMPLER_NAMES, ImageParams, params_from_infotext, read_png_parameters
from studio.errors import InputError, StudioError
from studio.models.estimate import Workload
from studio.models.specs import CATALOG, ModelSpec, spec_from_form
from studio.security import require_loaded_choice_or_owner, require_loaded_or_owner
from studio.text import fmt_bytes
from studio.ui import image_describe
from studio.ui import messages as msg
from studio.ui.forms import bind, whole
from studio.ui.session import StopFlags, stop_off, stop_on

IMAGE_PRECISIONS = ("fp16", "bf16", "fp32")
MODEL_HELP = "Model (pick one, or type a diffusers folder, a .safetensors checkpoint or a Hugging Face id)"
TINY_CHOICE = f"{TINY_LABEL}: offline, for trying the studio"


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The test pipeline, image models the manager knows, checkpoints in models/, then the recommended models."""
    choices: list[tuple[str, str]] = [(TINY_CHOICE, TINY_SOURCE)]
    for rec, spec in ctx.manager.models("image"):
        if model_name(spec) != TINY_SOURCE:
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
        raise InputError(msg.PICK_MODEL.format(what="an image model"))
    if precision not in IMAGE_PRECISIONS:
        raise InputError(f"Precision must be one of {', '.join(IMAGE_PRECISIONS)} for image models.")
    if choice == TINY_SOURCE:
        return ctx.image.tiny_spec(precision)
    return spec_from_form(ctx.device, "image", choice, precision)


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


# ----- forms ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SettingsForm:
    """The settings a PNG's parameters restore."""

    prompt: str | None
    negative: str | None
    sampler: str | None
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    seed: int | None
    strength: float | None  # denoising strength (image to image)

    API_ORDER = ("prompt", "negative", "sampler", "steps", "cfg", "width", "height", "seed", "strength")

    def current(self) -> ImageParams:
        """The settings as they stand, as ImageParams (restoring fills in only what a PNG says)."""
        fields = {}
        for name, key in zip(SettingsForm.API_ORDER, RESTORED_FIELDS, strict=True):
            value = getattr(self, name)
            if value is not None:
                fields[key] = int(value) if key in ("steps", "width", "height", "seed") else value
        return replace(ImageParams(), **fields)


RESTORED_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height", "seed", "strength")


@dataclass(frozen=True, kw_only=True)
class DrawForm(SettingsForm):
    """What a run draws with (the API order of `image_check` and `image_generate`)."""

    model: str | None
    precision: str
    batch_size: int | None
    batch_count: int | None
    init: str | None  # init image (image to image), or None

    API_ORDER = ("model", "precision", *SettingsForm.API_ORDER[:8], "batch_size", "batch_count", "init", "strength")

    def params(self) -> ImageParams:
        return ImageParams(
            prompt=(self.prompt or "").strip(),
            negative_prompt=(self.negative or "").strip(),
            sampler=self.sampler or SAMPLER_NAMES[0],
            steps=whole(self.steps, "Steps"),
            cfg_scale=float(self.cfg if self.cfg is not None else 7),
            width=whole(self.width, "Width"),
            height=whole(self.height, "Height"),
            seed=whole(self.seed, "Seed"),
            batch_size=whole(self.batch_size, "Batch size"),
            batch_count=whole(self.batch_count, "Batch count"),
            init_image=self.init or None,
            strength=float(self.strength if self.strength is not None else 0.75),
        )


@dataclass(frozen=True, kw_only=True)
class RestoreForm(SettingsForm):
    """A PNG dropped to restore its settings (the API order of `image_restore`)."""

    restore: Any  # the dropped file
    model: str | None
    precision: str

    API_ORDER = ("restore", "model", "precision", *SettingsForm.API_ORDER)


@dataclass(frozen=True, kw_only=True)
class ReuseForm(SettingsForm):
    """The gallery's selected image, to reuse its settings (the API order of `image_reuse`)."""

    selected_path: str | None
    model: str | None
    precision: str

    API_ORDER = ("selected_path", "model", "precision", *SettingsForm.API_ORDER)


# ----- the handlers ---------------------------------------------------------------------------------------------


class ImageTab:
    """The Image tab's handlers; stop flags are per browser session."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.flags = StopFlags()

    def page_load(self) -> tuple:
        """Every page (re)load shows the gallery and the model picker as they are now, not as they were when the
        studio started: images drawn since (by another page or /v1), models loaded or copied into models/ since;
        and a run being drawn (started before the reload, or by another page) shows its progress."""
        progress = self.ctx.image.progress()
        return (
            gallery_items(self.ctx),
            gr.Dropdown(choices=model_choices(self.ctx)),
            progress.line(),
            progress.finished_runs,
        )

    def gallery(self) -> list[tuple[str, str]]:
        return gallery_items(self.ctx)

    def poll(self, seen_runs: int | None) -> tuple:
        """Every second: the line of the run being drawn (whichever page started it), and the gallery again when a
        run has ended since the page last showed it (a page reloaded mid-run sees the images when it ends)."""
        progress = self.ctx.image.progress()
        if seen_runs == progress.finished_runs:
            return progress.line(), gr.skip(), gr.skip()
        return progress.line(), gallery_items(self.ctx), progress.finished_runs

    def visitor_spec(self, choice: str | None, precision: str, request: Any) -> ModelSpec:
        """The chosen model. A remote visitor's typed path is refused before it is looked at, with one answer
        whether it exists or not (the test pipeline is no path)."""
        if (choice or "").strip() != TINY_SOURCE:
            require_loaded_choice_or_owner(self.ctx.security, self.ctx.manager, "image", choice, request)
        return resolve_spec(self.ctx, choice, precision)

    @msg.user_errors
    def apply_defaults(
        self, choice: str | None, precision: str, restored: str | None = None, request: gr.Request = None
    ) -> tuple:
        """A model picked: its steps, CFG, size and sampler, and what loading it would take."""
        if not choice:
            return (*[gr.update()] * 6, None)
        spec = self.visitor_spec(choice, precision, request)
        d = defaults_for(spec)
        text = d.note
        if model_name(spec) != TINY_SOURCE:
            try:
                text = (text + " " + self.ctx.manager.plan(spec).message).strip()
            except StudioError as exc:  # not downloaded yet, or unknown: the size is not known before loading
                text = (text + " " + exc.message).strip()
        if restored and restored == choice:  # switched by a restore: its settings stay
            return (*[gr.update()] * 5, text, None)
        return d.steps, d.cfg_scale, d.width, d.height, d.sampler, text, None

    @msg.user_errors
    def load(
        self,
        choice: str | None,
        precision: str,
        width: int | None,
        height: int | None,
        request: gr.Request = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - a model not downloaded yet shows its download
    ) -> str:
        spec = self.visitor_spec(choice, precision, request)
        require_loaded_or_owner(self.ctx.security, self.ctx.manager, spec, request)
        self.ctx.image.prepare(spec)
        workload = Workload(width=whole(width, "Width"), height=whole(height, "Height"))
        plan = self.ctx.manager.plan(spec, workload)
        rec = self.ctx.image.load(spec, workload)
        return f"{plan.message}\n\n{spec.name} is ready: {fmt_bytes(rec.measured_bytes)} measured."

    @msg.user_errors
    def check(self, form: DrawForm, request: Any = None) -> None:
        """Quick checks before the run is queued: a bad setting is refused with its message, nothing else moves."""
        spec = self.visitor_spec(form.model, form.precision, request)
        form.params().check_inputs(max_side_for(spec), spec.name, lcm_applies(spec))

    def not_drawn(self, last: tuple | None, text: str, line: str) -> tuple:
        """The page after a failed run: the gallery with what was drawn (on disk already), and why not the rest."""
        return gallery_items(self.ctx), f"**Not drawn:** {text}"

    @msg.user_errors(final=not_drawn, warn=True)
    def generate(self, form: DrawForm, request: gr.Request = None, progress: Any = None):
        """Generator: the gallery grows batch by batch; the run's one progress line (image i of n, step, time left)
        is drawn by `poll`, so every page shows it (`progress` only relays a download's or a load's tqdm bars to API
        clients; the engine keeps the pipeline's per-step bar out). The status holds the result: what was drawn, or
        why not (a failure mid-run is reported there, and as a warning, so the gallery keeps what was drawn)."""
        spec = self.visitor_spec(form.model, form.precision, request)
        require_loaded_or_owner(self.ctx.security, self.ctx.manager, spec, request)
        params = form.params()
        stop = self.flags.start(request)
        yield gr.update(), ""
        for update in self.ctx.image.generate(spec, params, should_stop=stop.is_set):
            yield gallery_items(self.ctx), update.message if update.finished else gr.update()

    def request_stop(self, request: gr.Request = None) -> None:
        self.flags.stop(request)  # ends after the current step

    @msg.user_errors
    def restore(self, form: RestoreForm, request: Any = None) -> list:
        if not form.restore:
            return [*[gr.update()] * (len(SettingsForm.API_ORDER) + 1), "", None]
        file = form.restore
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        return self.restored(read_png_parameters(path), form, path)

    @msg.user_errors
    def reuse(self, form: ReuseForm, request: Any = None) -> list:
        if not form.selected_path:
            raise InputError(msg.PICK_GALLERY_IMAGE)
        return self.restored(read_png_parameters(form.selected_path), form, form.selected_path)

    def restored(self, text: str, form: RestoreForm | ReuseForm, path: str) -> list:
        """The settings, the model (switched when the PNG names another one in the list) and what was done."""
        restored = params_from_infotext(text, form.current(), where=f"{Path(path).name}'s parameters text")
        notes = list(restored.notes)
        p = restored.params
        values = [p.prompt, p.negative_prompt, p.sampler, p.steps, p.cfg_scale, p.width, p.height, p.seed, p.strength]
        new_model, switched = gr.update(), None
        current_name = self.current_name(form.model, form.precision)
        if restored.model and restored.model != current_name:
            found = choice_for_model(model_choices(self.ctx), restored.model)
            if found is None:
                notes.append(
                    f"It was drawn with {restored.model}, which is not in the model list: "
                    f"the model stays {current_name or form.model or 'unset'}."
                )
            elif found != form.model:
                new_model = switched = found
                notes.append(f"Switched the model to {restored.model}.")
        head = f"Restored the settings of {Path(path).name} (seed {p.seed})."
        return [*values, new_model, " ".join([head, *notes]), switched]

    def current_name(self, choice: str | None, precision: str) -> str:
        try:
            return model_name(resolve_spec(self.ctx, choice, precision))
        except StudioError:
            return ""

    def select(self, evt: gr.SelectData) -> tuple[str, str]:
        """The clicked image's own file (not the n-th of a fresh listing: the page's list may be older)."""
        path = selected_file(self.ctx, evt.value)
        if path is None:
            return "", ""
        try:
            return read_png_parameters(path), str(path)
        except StudioError as exc:
            return str(exc), ""


# ----- layout and wiring ----------------------------------------------------------------------------------------


def layout(ctx: AppContext) -> dict[str, Any]:
    """The tab's widgets, by name (the names the forms use)."""
    w: dict[str, Any] = {}
    choices = model_choices(ctx)
    first = TINY_SOURCE if ctx.device == "cpu" else "stabilityai/sd-turbo"
    precision = "fp16" if ctx.device == "cuda" else "fp32"
    start = defaults_for(resolve_spec(ctx, first, precision))
    with gr.Row():
        w["model"] = gr.Dropdown(
            choices=choices, value=first, allow_custom_value=True, label=MODEL_HELP, elem_id="image-model", scale=4
        )
        w["precision"] = gr.Dropdown(
            list(IMAGE_PRECISIONS), value=precision, label="Precision", elem_id="image-precision", scale=1
        )
        w["load"] = gr.Button("Load", elem_id="image-load", scale=1)
    w["note"] = gr.Markdown(start.note, elem_id="image-note")
    with gr.Row():
        with gr.Column(scale=2):
            settings_column(w, start)
        with gr.Column(scale=3):
            gallery_column(ctx, w)
    # the model a restore just switched to: the picker's change event then keeps the restored settings
    w["restored_model"] = gr.State(None)
    return w


def settings_column(w: dict[str, Any], start: Any) -> None:
    w["prompt"] = gr.Textbox(
        label="Prompt", lines=3, placeholder="a lighthouse at dusk, oil painting", elem_id="image-prompt"
    )
    w["negative"] = gr.Textbox("", label="Negative prompt", lines=2, elem_id="image-negative")
    with gr.Row():
        w["generate"] = gr.Button("Generate", variant="primary", elem_id="image-generate")
        w["stop"] = gr.Button("Stop", variant="stop", elem_id="image-stop", interactive=False)  # on while drawing
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            w["sampler"] = gr.Dropdown(
                list(SAMPLER_NAMES), value=start.sampler, label="Sampler", elem_id="image-sampler"
            )
            w["steps"] = gr.Slider(1, 150, value=start.steps, step=1, label="Steps", elem_id="image-steps")
        w["cfg"] = gr.Slider(
            0, 30, value=start.cfg_scale, step=0.5, label="CFG scale (0-1 = off)", elem_id="image-cfg"
        )
        with gr.Row():
            w["width"] = gr.Number(value=start.width, precision=0, step=8, label="Width", elem_id="image-width")
            w["height"] = gr.Number(value=start.height, precision=0, step=8, label="Height", elem_id="image-height")
        with gr.Row():
            w["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="image-seed")
            w["batch_size"] = gr.Number(value=1, precision=0, label="Batch size", elem_id="image-batch-size")
            w["batch_count"] = gr.Number(value=1, precision=0, label="Batch count", elem_id="image-batch-count")
    with gr.Accordion("Image to image", open=False):
        w["init"] = gr.Image(type="filepath", label="Init image (leave empty for text to image)", elem_id="image-init")
        w["strength"] = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="image-strength")
    with gr.Accordion("Restore settings from a PNG", open=False):
        w["restore"] = gr.File(
            label="Drop a PNG made here or by AUTOMATIC1111 / Forge", file_types=[".png"], elem_id="image-restore"
        )
        w["restore_status"] = gr.Markdown(elem_id="image-restore-status")


def gallery_column(ctx: AppContext, w: dict[str, Any]) -> None:
    w["progress"] = gr.Markdown(ctx.image.progress().line(), elem_id="image-progress")
    w["status"] = gr.Markdown(elem_id="image-status")
    w["gallery"] = gr.Gallery(
        value=gallery_items(ctx),
        label="Images (this and earlier sessions, newest first)",
        columns=4,
        height=520,
        object_fit="contain",
        elem_id="image-gallery",
    )
    with gr.Row():
        w["refresh"] = gr.Button("Refresh gallery", elem_id="image-refresh", scale=1)
        w["reuse"] = gr.Button("Reuse the selected image's settings", elem_id="image-reuse", scale=2)
    w["selected_params"] = gr.Textbox(
        label="Parameters of the selected image", lines=4, interactive=False, elem_id="image-params"
    )
    w["selected_path"] = gr.State("")
    w["seen_runs"] = gr.State(ctx.image.progress().finished_runs)  # the runs ended when the gallery was last listed
    w["timer"] = gr.Timer(1.0)
    image_describe.layout(w)  # Describe (a prompt from an image) and Ask in Chat


GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
PRIVATE = {"api_visibility": "private"}
LIGHT = {"queue": False, "show_progress": "hidden"}
QUICK = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}


def wire(tab: ImageTab, w: dict[str, Any]) -> None:
    """The tab's events."""
    check, draw_inputs = bind(tab.check, DrawForm, w)
    generate, _ = bind(tab.generate, DrawForm, w, progress=gr.Progress(track_tqdm=True))
    drawn = [w["gallery"], w["status"]]
    drawing = {"show_progress": "hidden", **GPU}  # the gallery stays visible; the progress line is `poll`'s
    stop = [w["stop"]]
    named = ({"api_name": "image_check"}, {"api_name": "image_generate"})
    for trigger, (check_api, draw_api) in ((w["generate"].click, named), (w["prompt"].submit, (PRIVATE, PRIVATE))):
        checked = trigger(check, draw_inputs, None, **check_api, **QUICK)
        on = checked.success(stop_on, None, stop, **PRIVATE, **LIGHT)
        on.then(generate, draw_inputs, drawn, **draw_api, **drawing).then(stop_off, None, stop, **PRIVATE, **LIGHT)
    w["stop"].click(tab.request_stop, None, None, api_name="image_stop", **QUICK)
    polled = [w["progress"], w["gallery"], w["seen_runs"]]
    w["timer"].tick(tab.poll, [w["seen_runs"]], polled, **PRIVATE, **LIGHT)
    defaults = [w[n] for n in ("steps", "cfg", "width", "height", "sampler", "note", "restored_model")]
    choice = [w["model"], w["precision"], w["restored_model"]]
    w["model"].change(tab.apply_defaults, choice, defaults, api_name="image_model", **QUICK)
    load_inputs = [w["model"], w["precision"], w["width"], w["height"]]
    w["load"].click(tab.load, load_inputs, [w["note"]], api_name="image_load", **GPU)
    restored = [*(w[n] for n in SettingsForm.API_ORDER), w["model"], w["restore_status"], w["restored_model"]]
    restore, restore_inputs = bind(tab.restore, RestoreForm, w)
    w["restore"].upload(restore, restore_inputs, restored, api_name="image_restore", **QUICK)
    w["refresh"].click(tab.gallery, None, [w["gallery"]], api_name="image_gallery", **LIGHT)
    selected = [w["selected_params"], w["selected_path"]]
    w["gallery"].select(tab.select, None, selected, api_name="image_select", **LIGHT)
    reuse, reuse_inputs = bind(tab.reuse, ReuseForm, w)
    w["reuse"].click(reuse, reuse_inputs, restored, api_name="image_reuse", **QUICK)


def build(ctx: AppContext) -> dict[str, Any]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tab = ImageTab(ctx)
    w = layout(ctx)
    wire(tab, w)
    image_describe.wire(ctx, w)
    w["tab"] = tab
    return w


def connect_page_load(ctx: AppContext, app: gr.Blocks, image: dict[str, Any]) -> None:
    """Every page (re)load shows the gallery and the model picker as they are now (see `ImageTab.page_load`)."""
    outputs = [image["gallery"], image["model"], image["progress"], image["seen_runs"]]
    app.load(image["tab"].page_load, None, outputs, api_name="image_page", queue=False, show_progress="hidden")
