"""The Chat tab: pick a model, talk to it with streaming, stop, regenerate, export, and try LoRA adapters.

Thin handlers: widgets -> ChatParams -> ctx.chat.stream() -> widgets. No torch here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines import llamacpp
from studio.engines.chat import ChatParams
from studio.engines.chat_defaults import SamplingDefaults
from studio.errors import InputError, ModelLoadError, StudioError
from studio.models.estimate import Workload
from studio.models.formats import is_gguf
from studio.models.gguf_vision import CATALOG as GGUF_VISION_CATALOG
from studio.models.gguf_vision import catalog_value, find_projector, is_projector_name
from studio.models.gguf_vision import takes_images as takes_gguf_images
from studio.models.specs import CATALOG, PRECISIONS, ModelSpec
from studio.models.vision import is_vision_config
from studio.security import require_loaded_choice_or_owner, require_loaded_or_owner, require_owner
from studio.text import blank, fmt_bytes
from studio.ui import chat_history, chat_images, chat_votes, hub_panel, vision_offer
from studio.ui import messages as msg
from studio.ui.forms import bind, whole
from studio.ui.inputs import optional
from studio.ui.session import StopFlags, session_key

STARTER_PREFIX = "starter:"
NO_ADAPTER = "(none: base model)"
TAKES_IMAGES = " · takes images"  # the picker's mark of a vision model


def _starter_choice(ctx: AppContext) -> tuple[str, str] | None:
    try:
        from studio.models.starter import starter_spec
    except ImportError:
        return None
    spec = starter_spec(ctx.device)
    return (f"{spec.label or spec.name} · {_gguf_engine(ctx)}", STARTER_PREFIX + spec.source)


def _gguf_engine(ctx: AppContext, path: Path | None = None) -> str:
    """What runs a GGUF model picked with precision auto: "llama.cpp · Q4_1", or transformers without llama.cpp."""
    if not llamacpp.available():
        return "transformers (llama.cpp is not installed)"
    if path is None:
        from studio.models.starter import starter_llamacpp_spec

        return llamacpp.engine_label(starter_llamacpp_spec(ctx.device), ctx.paths.models)
    spec = ModelSpec("chat", str(path), "file", device=ctx.device, backend=llamacpp.ENGINE)
    return llamacpp.engine_label(spec)


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The starter model, chat models already known to the manager, GGUF exports (newest first), local folders in
    models/, the GGUF models of Ollama, LM Studio and the Hugging Face cache and the --models-dir folders (by their
    own names), the catalog."""
    choices: list[tuple[str, str]] = []
    starter = _starter_choice(ctx)
    if starter:
        choices.append(starter)
    for rec, spec in [*ctx.manager.models("chat"), *ctx.manager.models("vision")]:
        if spec.source_type != "starter":
            sees = TAKES_IMAGES if spec.kind == "vision" or takes_gguf_images(spec) else ""
            choices.append((f"{rec.name} ({rec.state}) · {rec.engine or rec.precision}{sees}", spec.source))
    from studio.ui.export_panel import exported_models

    found = [*exported_models(ctx), *local_chat_models(ctx.paths.models)]
    found += ctx.discovery.chat_models(ctx.config.models_dir)
    choices.extend((_with_engine(ctx, label, value), value) for label, value in found)
    for entry in CATALOG:
        if entry.kind == "chat":
            choices.append(
                (f"{entry.label}{' · takes images' if entry.images else ''} — {entry.hub_id}", entry.hub_id)
            )
    for gguf_entry in GGUF_VISION_CATALOG:  # llama.cpp with its projector; fetched once with `hf download`
        choices.append((f"{gguf_entry.label}{TAKES_IMAGES} — {gguf_entry.repo}", catalog_value(gguf_entry)))
    seen, unique = set(), []
    for label, value in choices:
        if value not in seen:
            seen.add(value)
            unique.append((label, value))
    return unique


def local_chat_models(models: Path) -> list[tuple[str, str]]:
    """Causal LM folders (config.json naming a *ForCausalLM architecture), vision-language model folders (marked as
    taking images) and .gguf files put in the data dir's models/ folder by hand; the converted starter is offered as
    the starter already."""
    found: list[tuple[str, str]] = []
    if not models.is_dir():
        return found
    for config in sorted(models.glob("*/config.json")):
        if config.parent.name == "starter":
            continue
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
            architectures = data.get("architectures") or []
        except (OSError, ValueError, AttributeError):
            continue
        if is_vision_config(data):
            found.append((f"{config.parent.name} (folder){TAKES_IMAGES}", str(config.parent)))
        elif any(str(a).endswith("ForCausalLM") for a in architectures):
            found.append((f"{config.parent.name} (folder)", str(config.parent)))
    for gguf in sorted(models.glob("*.gguf")):
        if is_projector_name(gguf):  # a vision model's projector goes with its model, not on its own
            continue
        sees = TAKES_IMAGES if find_projector(gguf) is not None else ""
        found.append((f"{gguf.name} (single file){sees}", str(gguf)))
    return found


def _with_engine(ctx: AppContext, label: str, value: str) -> str:
    """A picker label that says which engine runs the model with precision auto."""
    path = Path(value)
    if value.endswith(".gguf") or (path.is_absolute() and path.is_file() and is_gguf(path)):
        sees = TAKES_IMAGES if TAKES_IMAGES not in label and find_projector(path) is not None else ""
        return f"{label} · {_gguf_engine(ctx, path)}{sees}"
    return f"{label} · transformers"


def adapter_folders(ctx: AppContext) -> list[str]:
    """PEFT adapters in the data dir (the Fine-tune tab writes them under runs/)."""
    found = sorted(
        {p.parent for p in ctx.paths.runs.rglob("adapter_config.json")}, key=lambda p: p.stat().st_mtime, reverse=True
    )
    return [str(p) for p in found]


def adapter_name(folder: str) -> str:
    """An adapter's name in 'Answer with': the folder's name, or its run's for a Fine-tune run's adapter/ folder
    (as "Try in Chat" names it), so two runs' adapters never share a name."""
    path = Path(folder)
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


def resolve_spec(ctx: AppContext, choice: str | None, precision: str) -> ModelSpec:
    """The picker's value as a ModelSpec."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError(msg.PICK_MODEL.format(what="a chat model"))
    if choice.startswith(STARTER_PREFIX):
        from studio.models.starter import starter_spec

        spec = starter_spec(ctx.device)
        if precision == llamacpp.AUTO:
            return llamacpp.auto_engine(spec)
        if precision not in PRECISIONS:
            raise InputError(f"Precision must be one of {', '.join(PRECISIONS)}.")
        return replace(spec, precision=precision)  # nf4, int8, ...: the converted starter at that precision
    spec = llamacpp.chat_spec(ctx.device, choice, precision)
    found = dict((value, label) for label, value in ctx.discovery.chat_models(ctx.config.models_dir))
    if choice in found:  # an Ollama blob is named by its hash: call it what Ollama calls it
        spec = replace(spec, label=found[choice].rsplit(" (", 1)[0])
    return spec


def answer_with_choices(ctx: AppContext, choice: str | None, precision: str) -> list[str]:
    """'Answer with': the base model, then the adapters attached on the server to the chosen model (held by the
    engine, so they outlive a page reload). A choice that is not a model yet (half typed) offers the base only."""
    try:
        spec = resolve_spec(ctx, choice, precision)
    except StudioError:
        return [NO_ADAPTER]
    return [NO_ADAPTER, *ctx.chat.attached(spec)]


def answer_with_update(ctx: AppContext, choice: str | None, precision: str, current: str | None) -> gr.Dropdown:
    """The 'Answer with' dropdown for the chosen model, keeping the current pick while it is still attached."""
    names = answer_with_choices(ctx, choice, precision)
    return gr.Dropdown(choices=names, value=current if current in names else NO_ADAPTER)


def _text(content: Any) -> str:
    """A chatbot message's text (Gradio may hand content back as a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    return "" if content is None else str(content)


def drop_empty_reply(history: list[dict] | None, added: bool) -> list[dict]:
    """The conversation to show after a failed reply: the bubble the reply added goes if nothing was written in it."""
    history = list(history or [])
    last = history[-1] if history else None
    if added and isinstance(last, dict) and last.get("role") == "assistant" and blank(_text(last.get("content"))):
        history.pop()
    return history


def note(title: str, text: str) -> dict:
    """A line the page shows in the conversation (an adapter attached by another tab) that the model never reads."""
    return {"role": "assistant", "content": text, "metadata": {"title": title, "id": "studio-note"}}


def is_note(message: dict) -> bool:
    return (message.get("metadata") or {}).get("id") == "studio-note"


def mark_stopped(text: str) -> str:
    """A reply cut by Stop or Clear, marked as such in the conversation."""
    return text.rstrip() + msg.CHAT_STOPPED_MARK if not blank(text) else msg.CHAT_STOPPED_EMPTY


def unmarked(text: str) -> str:
    """A reply as the model wrote it: the stopped mark is the page's, not the model's (see `mark_stopped`)."""
    return "" if text == msg.CHAT_STOPPED_EMPTY else text.removesuffix(msg.CHAT_STOPPED_MARK)


def conversation(system: str, history: list[dict], images: bool = False) -> list[dict]:
    """The chat as the engine reads it; with `images`, a user message's images go as image parts (chat_images).
    The page's own lines (notes from other tabs) and the stopped mark are never the model's."""
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history:
        if not isinstance(m, dict) or is_note(m):
            continue
        role = m.get("role")
        if role == "user":
            text = _text(m.get("content"))
            paths = chat_images.image_paths(m.get("content")) if images else []
            msgs.append({"role": role, "content": chat_images.engine_content(text, paths)})
        elif role == "assistant" and not blank(text := unmarked(_text(m.get("content")))):
            msgs.append({"role": role, "content": text})
    return msgs


def export_conversation(ctx: AppContext, system: str, history: list[dict], model_name: str) -> list[str]:
    """Write the conversation as Markdown and JSON to outputs/chats/ (on disk before it is offered)."""
    msgs = conversation(system, history)
    if not any(m["role"] == "user" for m in msgs):
        raise InputError(msg.NOTHING_TO_EXPORT)
    folder = ctx.paths.outputs / "chats"
    folder.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("chat-%Y%m%d-%H%M%S")
    md = [f"# Chat with {model_name}", ""]
    shown = [m for m in history if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    copied = chat_images.export_images(shown, folder, stem)  # the images beside the Markdown, linked from it
    pictures = iter(copied)  # one list per message of `msgs` after the system prompt (the same roles)
    for m in msgs:
        links = [] if m["role"] == "system" else next(pictures, [])
        md += [f"**{m['role']}**", "", *(f"![image]({link})" for link in links), m["content"], ""]
        if links:
            m["images"] = links
    md_path, json_path = folder / f"{stem}.md", folder / f"{stem}.json"
    md_path.write_text("\n".join(md), encoding="utf-8")
    json_path.write_text(
        json.dumps({"model": model_name, "messages": msgs}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return [str(md_path), str(json_path), *(str(folder / link) for links in copied for link in links)]


def buttons(replying: bool) -> tuple:
    """Send, Stop and Regenerate while a reply runs (Stop only) and after it (Send and Regenerate only)."""
    return (
        gr.Button(interactive=not replying),
        gr.Button(interactive=replying),
        gr.Button(interactive=not replying),
    )


def hold_buttons(asked_after: int | None) -> tuple:
    """A reply is about to run (unless its question was refused): Stop usable, Send and Regenerate not."""
    return (gr.skip(),) * 3 if asked_after == NOT_ASKED else buttons(True)


def release_buttons() -> tuple:
    """The reply has ended, however it ended."""
    return buttons(False)


def reply_failed(tab: Any, last: tuple | None, text: str, line: str) -> tuple:
    """The page after a failed reply: the conversation as it was (what the reply wrote is kept, an empty bubble it
    added goes) and the reason on the stats line."""
    if last is None:  # failed before it added anything
        return gr.skip(), gr.skip(), msg.CHAT_NO_REPLY.format(error=line)
    history, side, _ = last
    return drop_empty_reply(history, True), drop_empty_reply(side, True), msg.CHAT_NO_REPLY.format(error=line)


NOT_ASKED = -1  # `asked_after` of a question that a Clear overtook: no count of Clears matches it


@dataclass(frozen=True)
class ReplyForm:
    """What a reply reads from the tab, by widget (the order is the API's: `chat` and `chat_regenerate`)."""

    chatbot: list | None  # the conversation, the user's new message last
    side: list | None  # the same conversation answered without the adapter (side by side)
    model: str | None  # the picker's value
    precision: str
    system: str | None  # the system prompt
    temperature: float
    top_p: float
    top_k: int
    rep: float  # repetition penalty
    max_new: int  # max new tokens
    seed: int
    context: int  # context length (0 = the model's)
    use_adapter: str | None  # 'Answer with': an attached adapter, or NO_ADAPTER
    side_by_side: bool
    asked_after: int | None  # how many Clears the session had when the question was asked
    kv_type: str = "f16"  # llama.cpp's KV cache type
    flash_attn: bool = False  # llama.cpp's flash attention

    def params(self) -> ChatParams:
        params = ChatParams(
            max_new_tokens=whole(self.max_new, "Max new tokens"),
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=whole(self.top_k, "Top-k"),
            repetition_penalty=float(self.rep),
            seed=whole(self.seed, "Seed"),
            context_len=whole(self.context, "Context length"),
            kv_cache_type=self.kv_type or "f16",
            flash_attn=bool(self.flash_attn),
        )
        params.check_inputs()
        return params

    @property
    def adapter(self) -> str | None:
        return None if self.use_adapter in (None, "", NO_ADAPTER) else self.use_adapter


def workload_for(context: int | None) -> Workload:
    return Workload(context_len=max(int(context or 0), 0))


WAIT_TICK = 1.0  # seconds between updates of the bubble's wait line


def defaults_line(name: str, found: SamplingDefaults) -> str:
    """The line under the settings that says which sampling defaults were set, and from where."""
    if not found.values and not found.ignored:
        return msg.CHAT_DEFAULTS_NONE.format(name=name)
    values = ", ".join(f"{field} {value:g}" for field, value in found.values) or "none the studio can take"
    line = msg.CHAT_DEFAULTS.format(source=f"{name}'s {found.source}", values=values)
    return line + (msg.CHAT_DEFAULTS_IGNORED.format(ignored=", ".join(found.ignored)) if found.ignored else "")


def sampling_values(found: SamplingDefaults) -> dict[str, float | int]:
    """The Sampling widgets' values for a model: its own defaults, the studio's for what it does not set."""
    studio = ChatParams()
    return {
        "temperature": found.get("temperature", studio.temperature),
        "top_p": found.get("top_p", studio.top_p),
        "top_k": found.get("top_k", studio.top_k),
        "rep": found.get("repetition_penalty", studio.repetition_penalty),
        "max_new": found.get("max_new_tokens", studio.max_new_tokens),
    }


SAMPLING_WIDGETS = ("temperature", "top_p", "top_k", "rep", "max_new")


class ChatTab:
    """The Chat tab's handlers. One per page build; `flags` are per browser session."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.flags = StopFlags()

    def refresh(self, choice: str | None, precision: str, current: str | None) -> tuple:
        """On every page load: the model list, the adapter folders under runs/ (trained since the studio started) and
        the adapters attached on the server to the chosen model."""
        return gr.Dropdown(choices=model_choices(self.ctx)), *self.model_changed(choice, precision, current)

    def model_changed(self, choice: str | None, precision: str, current: str | None) -> tuple:
        """Another model (or precision) is another base: offer its adapters."""
        return gr.Dropdown(choices=adapter_folders(self.ctx)), answer_with_update(self.ctx, choice, precision, current)

    @msg.user_errors
    def show_plan(self, choice: str | None, precision: str, context: int | None, request: gr.Request = None) -> str:
        if not choice:
            return ""
        spec = self.owned_spec(choice, precision, request)
        try:
            plan = self.ctx.manager.plan(spec, workload_for(context))
        except ModelLoadError as exc:
            if spec.source_type != "hub":
                raise
            # a Hub id not downloaded: the plan line says whether the Hub is there, and to Download (beside it)
            return str(hub_panel.not_downloaded(self.ctx, spec, exc))
        est = plan.estimate
        fallback = llamacpp.fallback_notice(spec)
        return (
            f"Engine: {llamacpp.engine_label(spec, self.ctx.paths.models)}. {plan.message} "
            f"Estimate: {fmt_bytes(est.total)} = weights {fmt_bytes(est.weights_bytes)} + "
            f"KV cache and activations {fmt_bytes(est.runtime_bytes)} ({est.method}).{' ' + fallback if fallback else ''}"
        )

    @msg.user_errors
    def load(
        self,
        choice: str | None,
        precision: str,
        context: int | None,
        request: gr.Request = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - a model not downloaded yet shows its download
    ) -> str:
        spec = self.owned_spec(choice, precision, request)
        plan = self.ctx.manager.plan(spec, workload_for(context))
        rec = self.ctx.chat.load(spec, workload_for(context))
        return f"{plan.message}\n\n{spec.name} is ready: {fmt_bytes(rec.measured_bytes)} measured."

    def owned_spec(self, choice: str | None, precision: str, request: Any) -> ModelSpec:
        """The chosen model, if this visitor may use it: the bundled starter is anyone's (as on /v1), other models
        the owner's to load."""
        if str(choice).startswith(STARTER_PREFIX):
            return resolve_spec(self.ctx, choice, precision)
        # before the path is looked at: one answer for a remote visitor's path, whether it exists or not
        require_loaded_choice_or_owner(self.ctx.security, self.ctx.manager, "chat", choice, request)
        spec = resolve_spec(self.ctx, choice, precision)
        require_loaded_or_owner(self.ctx.security, self.ctx.manager, spec, request)
        return spec

    @msg.user_errors
    def model_defaults(self, choice: str | None, precision: str) -> tuple:
        """A model picked: its own sampling defaults in the Sampling widgets (the user can change them), and the line
        that says which were taken. A choice that is not a model (yet) leaves them as they are."""
        try:
            spec = resolve_spec(self.ctx, choice, precision)
        except StudioError:
            return (*(gr.skip() for _ in SAMPLING_WIDGETS), "")
        found = self.ctx.chat.sampling_defaults(spec)
        values = sampling_values(found)
        return (*(values[name] for name in SAMPLING_WIDGETS), defaults_line(spec.name, found))

    def stream_reply(self, spec, msgs, params, adapter, stop, history, side, prefix=""):
        """Stream into history[-1]; yields (history, side, stats). A stopped reply is marked as such."""
        stats = prefix
        for chunk in self.ctx.chat.stream(spec, msgs, params, adapter=adapter, should_stop=stop.is_set):
            history[-1]["content"] = chunk.text
            if chunk.notice:
                stats = f"{prefix}{chunk.notice} "
            if chunk.done and chunk.stats:
                stats += chunk.stats.summary()
                if chunk.stats.finish_reason == "stopped":
                    history[-1]["content"] = mark_stopped(chunk.text)
            yield history, side, stats

    def wait_for_load(self, spec, params, stop, history, side, stats):
        """Before the first token: load the model in a worker thread while the reply's bubble says what it waits for
        and for how long (the starter's one-time conversion takes a minute). Yields (history, side, stats) every
        WAIT_TICK seconds; a Stop ends the wait (the load goes on, and the model is there for the next reply)."""
        step = self.ctx.chat.waiting_for(spec, params)
        if not step:
            return
        failed: list[BaseException] = []
        done = threading.Event()

        def work() -> None:
            try:
                self.ctx.chat.load(spec, workload_for(params.context_len), params)
            except BaseException as exc:  # noqa: BLE001 - raised again in the handler's thread
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name="chat-load", daemon=True).start()
        t0 = time.monotonic()
        while True:
            history[-1]["content"] = msg.CHAT_WAITING[step].format(name=spec.name, seconds=time.monotonic() - t0)
            yield history, side, stats
            if done.wait(WAIT_TICK) or stop.is_set():
                break
        history[-1]["content"] = ""  # the wait line is not a reply: a failure leaves no bubble behind
        if failed:
            raise failed[0]

    @msg.user_errors(final=reply_failed)
    def respond(self, form: ReplyForm, request: gr.Request = None, progress: Any = None):
        """Generator: the reply streams into the chatbot. A reply that fails before writing anything leaves the
        conversation as it was (the user's message stays, no empty bubble to feed the next prompt); what a reply
        wrote before failing is kept."""
        session = session_key(request)
        if form.asked_after is not None and form.asked_after != self.flags.clears(session):
            # asked before a Clear (or refused), and waited in the queue: the chat stays as it is
            yield gr.skip(), gr.skip(), gr.skip()
            return
        with self.flags.running(session):  # Clear waits for this to end
            cleared = self.flags.clears(session)
            yield from self._respond(form, request)
            if self.flags.clears(session) != cleared:
                # a Clear ended this reply: its last message (which Gradio sends again when the reply ends, maybe
                # after Clear's own) is the empty chat too, so the page stays clear whichever arrives last
                yield [], [], ""

    def _respond(self, form: ReplyForm, request: Any):
        """The reply itself (see `respond`)."""
        spec = self.owned_spec(form.model, form.precision, request)
        params, adapter = form.params(), form.adapter
        msgs = conversation(form.system or "", form.chatbot or [], images=True)
        if not msgs or msgs[-1]["role"] != "user" or blank(_text(msgs[-1]["content"])):
            raise InputError(msg.TYPE_FIRST)
        stop = self.flags.start(request)
        prefix = "" if self.ctx.chat.is_loaded(spec) else self.ctx.manager.plan(spec).message + " "
        history, side = [*(form.chatbot or []), {"role": "assistant", "content": ""}], form.side
        yield history, side, prefix + "Thinking…"
        yield from self.wait_for_load(spec, params, stop, history, side, prefix + "Thinking…")
        with_stats = ""
        for _, _, with_stats in self.stream_reply(spec, msgs, params, adapter, stop, history, side, prefix):
            yield history, side, with_stats
        if form.side_by_side and adapter:
            # both replies' stats stay on the page: the base reply's must not overwrite the adapter's
            with_stats = with_stats.removeprefix(prefix)
            side, without_stats = [dict(m) for m in history[:-1]] + [{"role": "assistant", "content": ""}], ""
            for _, _, without_stats in self.stream_reply(spec, msgs, params, None, stop, side, None):
                both = msg.CHAT_SIDE_STATS.format(
                    adapter=adapter, with_stats=with_stats, without_stats=without_stats or msg.CHAT_SIDE_WAITING
                )
                yield history, side, prefix + both
        elif form.side_by_side:  # no adapter: the same question answered again with the next seed (two samples)
            first = with_stats.removeprefix(prefix)
            side, second = [dict(m) for m in history[:-1]] + [{"role": "assistant", "content": ""}], ""
            again = replace(params, seed=(params.seed + 1) % 2**63) if params.seed >= 0 else params
            for _, _, second in self.stream_reply(spec, msgs, again, None, stop, side, None):
                both = chat_votes.TWO_SAMPLES_STATS.format(first=first, second=second or msg.CHAT_SIDE_WAITING)
                yield history, side, prefix + both

    def _add_user(self, text: str | None, history: list | None, request: Any) -> tuple:
        session = session_key(request)
        if self.flags.clearing(session):
            # sent just before a Clear that is still ending the reply: the Clear wins, the text stays in the box and
            # the question is not answered (its history is the one being cleared)
            return gr.skip(), gr.skip(), NOT_ASKED
        if blank(text):
            raise InputError(msg.TYPE_FIRST)
        if self.flags.busy(session):  # Enter while a reply runs (Send is disabled then): nothing is cut
            raise InputError(msg.CHAT_BUSY)
        return "", [*(history or []), {"role": "user", "content": text}], self.flags.clears(session)

    @msg.user_errors
    def add_user(self, text: str | None, history: list | None, request: gr.Request = None) -> tuple:
        """The API's step one: the user's message joins the conversation (refusals are errors)."""
        return self._add_user(text, history, request)

    def ask(self, text: str | None, history: list | None, request: gr.Request = None) -> tuple:
        """The page's Send and Enter: as `add_user`, but a refusal (an empty message, a reply still running) is a
        warning that leaves the conversation in view, and the reply step that follows does nothing."""
        try:
            return self._add_user(text, history, request)
        except StudioError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip(), NOT_ASKED

    def add_images(self, history: list | None, files: list | None, asked_after: int | None) -> tuple:
        """The images dropped beside the message join the question `add_user` just added (then the box empties); they
        are kept in outputs/chat-images/, so that Past chats and a reload show them again."""
        history = list(history or [])
        if not files or asked_after == NOT_ASKED or not history or history[-1].get("role") != "user":
            return gr.skip(), gr.skip()
        kept = chat_images.keep(files, chat_images.store(self.ctx.paths.outputs))
        history[-1] = chat_images.user_message(_text(history[-1].get("content")), kept)
        return history, None

    def request_stop(self, request: gr.Request = None) -> None:
        self.flags.stop(request)  # the reply ends after its current token

    @msg.user_errors
    def drop_last_reply(self, history: list | None, request: gr.Request = None) -> tuple:
        """The API's first step of Regenerate: the last reply leaves the conversation (refusals are errors)."""
        return self._drop_last_reply(history, request)

    def redo(self, history: list | None, request: gr.Request = None) -> tuple:
        """The page's Regenerate: as `drop_last_reply`, but nothing to regenerate is a warning that leaves the
        conversation in view, and the reply step that follows does nothing."""
        try:
            return self._drop_last_reply(history, request)
        except StudioError as exc:
            gr.Warning(str(exc))
            return gr.skip(), NOT_ASKED

    def _drop_last_reply(self, history: list | None, request: gr.Request = None) -> tuple:
        if self.flags.clearing(session_key(request)):  # pressed just before a Clear: the Clear wins (see add_user)
            return gr.skip(), NOT_ASKED
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":
            history.pop()
        if not history:
            raise InputError(msg.NOTHING_TO_REGENERATE)
        return history, self.flags.clears(session_key(request))

    def clear_chat(self, request: gr.Request = None) -> tuple:
        # a reply being written ends, and its last message reaches the page before Clear's
        self.flags.clear(session_key(request), timeout=30)
        return [], [], ""

    @msg.user_errors
    def attach(self, choice: str | None, precision: str, folder: str | None, request: gr.Request = None) -> tuple:
        require_owner(self.ctx.security, request, "attach adapters from server folders")
        spec = resolve_spec(self.ctx, choice, precision)
        if not (folder or "").strip():
            raise InputError(msg.PICK_ADAPTER_FOLDER)
        name = self.ctx.chat.attach_adapter(spec, folder.strip(), name=adapter_name(folder.strip()))
        return (
            gr.Dropdown(choices=[NO_ADAPTER, *self.ctx.chat.attached(spec)], value=name),
            f"Attached {name} to {spec.name} (the base stays loaded).",
        )

    @msg.user_errors
    def detach(self, choice: str | None, precision: str, current: str | None, request: gr.Request = None) -> tuple:
        require_owner(self.ctx.security, request, "detach adapters")
        spec = resolve_spec(self.ctx, choice, precision)
        if current in (None, "", NO_ADAPTER):
            raise InputError(msg.PICK_ADAPTER_TO_DETACH)
        self.ctx.chat.detach_adapter(spec, current)
        return (
            gr.Dropdown(choices=[NO_ADAPTER, *self.ctx.chat.attached(spec)], value=NO_ADAPTER),
            f"Detached {current}; {spec.name} answers as before.",
        )

    @msg.user_errors
    def export(self, history: list | None, system: str | None, choice: str | None, precision: str) -> gr.File:
        name = resolve_spec(self.ctx, choice, precision).name if choice else "unknown model"
        return gr.File(value=export_conversation(self.ctx, system or "", history or [], name), visible=True)


# ----- layout and wiring ----------------------------------------------------------------------------------------


def layout(ctx: AppContext) -> dict[str, gr.components.Component]:
    """The tab's widgets, by name (the names the forms use)."""
    w: dict[str, Any] = {}
    choices = model_choices(ctx)
    with gr.Row():
        w["model"] = gr.Dropdown(
            choices=choices,
            value=choices[0][1] if choices else None,
            allow_custom_value=True,
            label="Model (pick one, or type a folder, a .gguf file or a Hugging Face id)",
            elem_id="chat-model",
            scale=4,
        )
        w["precision"] = gr.Dropdown(
            [llamacpp.AUTO, *PRECISIONS],
            value=llamacpp.AUTO,
            label="Precision (auto: llama.cpp for GGUF files; a precision: transformers)",
            elem_id="chat-precision",
            scale=1,
        )
        w["load"] = gr.Button("Load", elem_id="chat-load", scale=1)
    w["plan"] = gr.Markdown(elem_id="chat-plan")
    w["download"] = hub_panel.layout("chat")  # Download, for a Hub id not in the cache yet
    with gr.Row():
        with gr.Column(scale=3):
            chat_history.layout(w, ctx.paths.data_dir)  # Past chats, kept in the visitor's browser
            conversation_column(w)
        with gr.Column(scale=1):
            settings_column(ctx, w)
    return w


def conversation_column(w: dict[str, Any]) -> None:
    with gr.Row():  # side by side: the conversation on the left, the other reply on the right
        w["chatbot"] = gr.Chatbot(label="Conversation", elem_id="chat-history", height=460, buttons=["copy"])
        w["side"] = gr.Chatbot(label=chat_votes.SIDE_LABEL, elem_id="chat-side", height=460, visible=False)
    w["asked_after"] = gr.State(None)  # how many Clears the session had when its last question was asked
    chat_votes.layout(w)  # Left is better / Right is better / Both bad, and where a vote went
    w["images"] = gr.File(
        label="Images for the next message (drop, upload or paste; for a model marked as taking images)",
        file_count="multiple",
        height=120,
        elem_id="chat-images",
    )
    w["input"] = gr.Textbox(
        label="Message",
        placeholder="Type a message and press Enter (Shift+Enter: new line)",
        lines=1,
        max_lines=8,
        elem_id="chat-input",
    )
    with gr.Row():
        w["send"] = gr.Button("Send", variant="primary", elem_id="chat-send")
        w["stop"] = gr.Button("Stop", variant="stop", elem_id="chat-stop", interactive=False)  # only while replying
        w["regenerate"] = gr.Button("Regenerate", elem_id="chat-regenerate")
        w["clear"] = gr.Button("Clear", elem_id="chat-clear")
        w["export"] = gr.Button("Export", elem_id="chat-export")
    w["stats"] = gr.Markdown(elem_id="chat-stats")
    vision_offer.layout(w)  # a text-only model sent images: "Use <vision model>"
    w["export_files"] = gr.File(
        label="Exported conversation", file_count="multiple", visible=False, elem_id="chat-export-files"
    )


def initial_defaults(ctx: AppContext, choice: str | None) -> tuple[dict[str, float | int], str]:
    """The Sampling widgets' first values and the defaults line: those of the model the picker starts on."""
    try:
        spec = resolve_spec(ctx, choice, llamacpp.AUTO)
    except StudioError:
        return sampling_values(SamplingDefaults()), ""
    found = ctx.chat.sampling_defaults(spec)
    return sampling_values(found), defaults_line(spec.name, found)


def settings_column(ctx: AppContext, w: dict[str, Any]) -> None:
    w["system"] = gr.Textbox("", label="System prompt", lines=3, elem_id="chat-system")
    first, line = initial_defaults(ctx, w["model"].value)
    with gr.Accordion("Sampling", open=False):
        w["temperature"] = gr.Slider(
            0, 2, value=first["temperature"], step=0.05, label="Temperature (0 = greedy)", elem_id="chat-temperature"
        )
        w["top_p"] = gr.Slider(0.05, 1, value=first["top_p"], step=0.05, label="Top-p", elem_id="chat-top-p")
        w["top_k"] = gr.Slider(0, 200, value=first["top_k"], step=1, label="Top-k (0 = off)", elem_id="chat-top-k")
        w["rep"] = gr.Slider(0.5, 2, value=first["rep"], step=0.05, label="Repetition penalty", elem_id="chat-rep")
        w["max_new"] = gr.Number(value=first["max_new"], precision=0, label="Max new tokens", elem_id="chat-max-new")
        w["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="chat-seed")
        w["context"] = gr.Number(
            value=0, precision=0, label="Context length (0 = the model's)", elem_id="chat-context"
        )
    w["defaults"] = gr.Markdown(line, elem_id="chat-defaults")  # which sampling defaults the model gave
    with gr.Accordion("llama.cpp", open=False):
        w["kv_type"] = optional(
            gr.Dropdown(
                list(llamacpp.KV_TYPES),
                value="f16",
                label="KV cache type (q8_0, q4_0 need flash attention)",
                elem_id="chat-kv-type",
            )
        )
        w["flash_attn"] = optional(gr.Checkbox(label="Flash attention", value=False, elem_id="chat-flash-attn"))
    with gr.Accordion("LoRA adapters", open=True):
        w["adapter_path"] = gr.Dropdown(
            choices=adapter_folders(ctx), allow_custom_value=True, label="Adapter folder", elem_id="chat-adapter-path"
        )
        with gr.Row():
            w["attach"] = gr.Button("Attach", elem_id="chat-attach")
            w["detach"] = gr.Button("Detach", elem_id="chat-detach")
        w["use_adapter"] = gr.Dropdown(
            choices=[NO_ADAPTER], value=NO_ADAPTER, label="Answer with", elem_id="chat-use-adapter"
        )
        w["side_by_side"] = gr.Checkbox(
            label="Side by side: also answer without the adapter (no adapter: a second sample)",
            elem_id="chat-side-by-side",
        )
        w["adapter_status"] = gr.Markdown(elem_id="chat-adapter-status")


GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}
LIGHT = {"queue": False, "show_progress": "hidden"}
# queued (errors only reach the page from queued events) in a lane of their own that never waits for the GPU
QUICK = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}


def wire(tab: ChatTab, w: dict[str, Any]) -> None:
    """The tab's events."""
    respond, reply_inputs = bind(tab.respond, ReplyForm, w, progress=gr.Progress(track_tqdm=True))
    reply_outputs = [w["chatbot"], w["side"], w["stats"]]
    # progress (a download) and errors show on the stats line: the conversation stays in view, after an error too
    replying = {"show_progress_on": [w["stats"]], **GPU}
    asked = [w["input"], w["chatbot"], w["asked_after"]]
    # the page asks through `ask` (a refusal is a warning, never an error over the conversation); API clients through
    # `chat_add_user`, whose refusals are errors
    gr.on([], tab.add_user, [w["input"], w["chatbot"]], asked, api_name="chat_add_user", **QUICK)
    # while a reply runs Stop is usable, Send and Regenerate are not (Enter is refused by `ask`)
    held = [w["send"], w["stop"], w["regenerate"]]
    hold = {"fn": hold_buttons, "inputs": [w["asked_after"]], "outputs": held, "api_visibility": "private", **LIGHT}
    release = {"fn": release_buttons, "inputs": None, "outputs": held, "api_visibility": "private", **LIGHT}
    w["hold"], w["release"] = hold, release
    replies = []  # the reply events, after which the vision offer shows or hides
    # the images dropped beside the message join the question just asked (`add_images`), then the reply runs
    with_images = [w["chatbot"], w["images"], w["asked_after"]]
    sent = w["send"].click(tab.ask, [w["input"], w["chatbot"]], asked, api_visibility="private", **QUICK)
    sent.success(**hold)
    imaged = sent.success(
        tab.add_images, with_images, [w["chatbot"], w["images"]], api_name="chat_add_images", **QUICK
    )
    answered = imaged.success(respond, reply_inputs, reply_outputs, api_name="chat", **replying)
    replies.append(answered)
    answered.then(**release)
    answered.failure(**release)  # `then` follows a reply that ended; a failed one is followed by `failure` only
    imaged.failure(**release)
    entered = w["input"].submit(tab.ask, [w["input"], w["chatbot"]], asked, api_visibility="private", **QUICK)
    entered.success(**hold)
    imaged = entered.success(
        tab.add_images, with_images, [w["chatbot"], w["images"]], api_visibility="private", **QUICK
    )
    answered = imaged.success(respond, reply_inputs, reply_outputs, api_visibility="private", **replying)
    replies.append(answered)
    answered.then(**release)
    answered.failure(**release)
    imaged.failure(**release)
    # for other tabs that ask a question here (Try the export in Chat): the same two steps as Send
    w["ask"] = {"fn": tab.ask, "inputs": [w["input"], w["chatbot"]], "outputs": asked, **QUICK}
    w["reply"] = {"fn": respond, "inputs": reply_inputs, "outputs": reply_outputs, **replying}
    dropped_outputs = [w["chatbot"], w["asked_after"]]
    gr.on([], tab.drop_last_reply, [w["chatbot"]], dropped_outputs, api_name="drop_last_reply", **QUICK)
    dropped = w["regenerate"].click(tab.redo, [w["chatbot"]], dropped_outputs, api_visibility="private", **QUICK)
    dropped.success(**hold)
    answered = dropped.success(respond, reply_inputs, reply_outputs, api_name="chat_regenerate", **replying)
    replies.append(answered)
    answered.then(**release)
    answered.failure(**release)
    # queued (so it carries the same session as the reply) but in its own lane: never waits behind the GPU
    w["stop"].click(tab.request_stop, None, None, api_name="chat_stop", **QUICK)
    # no `cancels=`: a cancelled reply's last message can still arrive after Clear's; waiting for it orders them
    w["clear"].click(tab.clear_chat, None, [w["chatbot"], w["side"], w["stats"]], api_name="chat_clear", **QUICK)
    w["export"].click(
        tab.export,
        [w["chatbot"], w["system"], w["model"], w["precision"]],
        [w["export_files"]],
        api_name="chat_export",
    )
    plan_inputs = [w["model"], w["precision"], w["context"]]
    w["model"].change(tab.show_plan, plan_inputs, [w["plan"]], api_name="chat_plan", **LIGHT)
    # a model picked by the user (not set by a page-load restore, which brings back the user's own settings): its
    # own sampling defaults (the user can still change them)
    w["model"].input(
        tab.model_defaults,
        [w["model"], w["precision"]],
        [*(w[name] for name in SAMPLING_WIDGETS), w["defaults"]],
        api_name="chat_model_defaults",
        **LIGHT,
    )
    for name in ("precision", "context"):
        w[name].change(tab.show_plan, plan_inputs, [w["plan"]], **LIGHT)
    for name in ("model", "precision"):
        w[name].change(
            tab.model_changed,
            [w["model"], w["precision"], w["use_adapter"]],
            [w["adapter_path"], w["use_adapter"]],
            api_visibility="private",
            **LIGHT,
        )
    w["load"].click(tab.load, plan_inputs, [w["plan"]], api_name="chat_load", **GPU)
    downloads = hub_panel.HubPanel(tab.ctx, msg.DOWNLOAD_NEXT_CHAT, lambda choice, _precision: choice, tab.show_plan)
    hub_panel.wire(downloads, w["download"], [w["model"], w["precision"]], "chat", plan_inputs, w["plan"])
    adapter_outputs = [w["use_adapter"], w["adapter_status"]]
    w["attach"].click(
        tab.attach, [w["model"], w["precision"], w["adapter_path"]], adapter_outputs, api_name="chat_attach", **GPU
    )
    w["detach"].click(
        tab.detach, [w["model"], w["precision"], w["use_adapter"]], adapter_outputs, api_name="chat_detach", **GPU
    )
    w["side_by_side"].change(lambda on: gr.Chatbot(visible=bool(on)), [w["side_by_side"]], [w["side"]], **LIGHT)
    vision_offer.wire(tab, w, replies, model_choices)  # images sent to a text-only model: one click to a vision model


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    tab = ChatTab(ctx)
    w = layout(ctx)
    wire(tab, w)
    chat_history.wire(tab, w)  # the conversation and settings are kept in the browser
    chat_votes.wire(tab, w)  # votes on the replies become preference data
    w["tab"] = tab  # the handlers, for the page-load refresh and for tests
    return w


def connect_page_load(ctx: AppContext, app: gr.Blocks, chat: dict[str, Any]) -> None:
    """On every page load (a reload too), refresh what the page was built with (see `ChatTab.refresh`)."""
    # first the conversation and settings this browser kept: the refresh then keeps an adapter still attached
    chat_history.connect_page_load(app, chat).then(
        chat["tab"].refresh,
        [chat["model"], chat["precision"], chat["use_adapter"]],
        [chat["model"], chat["adapter_path"], chat["use_adapter"]],
        api_name="chat_refresh",
        queue=False,
        show_progress="hidden",
    ).then(  # the picked model's engine and plan, before anything is sent
        chat["tab"].show_plan,
        [chat["model"], chat["precision"], chat["context"]],
        [chat["plan"]],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
    chat_images.connect_paste(app)  # after the restore: an image pasted into the message box joins the images box
