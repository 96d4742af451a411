"""The Chat tab: pick a model, talk to it with streaming, stop, regenerate, export, and try LoRA adapters.

Thin handlers: widgets -> ChatParams -> ctx.chat.stream() -> widgets. No torch here.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import AppContext
from studio.engines.chat import ChatParams
from studio.errors import InputError, StudioError
from studio.models.estimate import Workload
from studio.models.specs import CATALOG, PRECISIONS, ModelSpec
from studio.security import require_loaded_or_owner, require_owner
from studio.text import blank, fmt_bytes
from studio.ui import messages as msg
from studio.ui.models_tab import spec_from_form

STARTER_PREFIX = "starter:"
NO_ADAPTER = "(none: base model)"


def session_key(request: gr.Request | None) -> str:
    """The browser session a request comes from ("local" for a direct call): stop flags are kept per session."""
    return request.session_hash if request else "local"


class StopFlags:
    """Per-browser-session stop requests (the Stop button is never queued behind the reply it stops), and which
    sessions have a reply running, so that Clear can wait for a stopped reply's last message before emptying."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._running: Counter[str] = Counter()
        self._clears: Counter[str] = Counter()  # how many times each session's conversation was cleared
        self._lock = threading.Condition()

    def event(self, session: str) -> threading.Event:
        with self._lock:
            return self._flags.setdefault(session, threading.Event())

    @contextmanager
    def running(self, session: str) -> Iterator[None]:
        with self._lock:
            self._running[session] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[session] -= 1
                if self._running[session] <= 0:
                    del self._running[session]
                self._lock.notify_all()

    def clears(self, session: str) -> int:
        with self._lock:
            return self._clears[session]

    def clear(self, session: str, timeout: float) -> None:
        """Clear pressed: a reply being written stops, and Clear waits (at most `timeout` seconds) until it has ended,
        so that the reply's last message reaches the page before Clear's own. Replies asked for before this Clear
        and still waiting in the queue will not answer (see `clears`)."""
        with self._lock:
            self._clears[session] += 1
        self.event(session).set()
        self.wait_idle(session, timeout)

    def wait_idle(self, session: str, timeout: float) -> bool:
        """True once no reply of this session runs (at most `timeout` seconds)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._running[session], timeout)


def _starter_choice(ctx: AppContext) -> tuple[str, str] | None:
    try:
        from studio.models.starter import starter_spec
    except ImportError:
        return None
    spec = starter_spec(ctx.device)
    return (spec.label or spec.name, STARTER_PREFIX + spec.source)


def model_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The starter model, chat models already known to the manager, local folders in models/, the catalog."""
    choices: list[tuple[str, str]] = []
    starter = _starter_choice(ctx)
    if starter:
        choices.append(starter)
    for rec in ctx.manager.records():
        spec = ctx.manager.spec_for(rec.key)
        if rec.kind == "chat" and spec is not None and spec.source_type != "starter":
            choices.append((f"{rec.name} ({rec.state})", spec.source))
    choices.extend(local_chat_models(ctx.paths.models))
    for entry in CATALOG:
        if entry.kind == "chat":
            choices.append((f"{entry.label} — {entry.hub_id}", entry.hub_id))
    seen, unique = set(), []
    for label, value in choices:
        if value not in seen:
            seen.add(value)
            unique.append((label, value))
    return unique


def local_chat_models(models: Path) -> list[tuple[str, str]]:
    """Causal LM folders (config.json naming a *ForCausalLM architecture) and .gguf files put in the data dir's
    models/ folder by hand; the converted starter is offered as the starter already."""
    found: list[tuple[str, str]] = []
    if not models.is_dir():
        return found
    for config in sorted(models.glob("*/config.json")):
        if config.parent.name == "starter":
            continue
        try:
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            continue
        if any(str(a).endswith("ForCausalLM") for a in architectures):
            found.append((f"{config.parent.name} (folder)", str(config.parent)))
    for gguf in sorted(models.glob("*.gguf")):
        found.append((f"{gguf.name} (single file)", str(gguf)))
    return found


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
        raise InputError("Pick a chat model first.")
    if choice.startswith(STARTER_PREFIX):
        from studio.models.starter import starter_spec

        return starter_spec(ctx.device)
    return spec_from_form(ctx, "chat", choice, precision)


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


def conversation(system: str, history: list[dict]) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history:
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("user", "assistant"):
            msgs.append({"role": role, "content": _text(m.get("content"))})
    return msgs


def export_conversation(ctx: AppContext, system: str, history: list[dict], model_name: str) -> list[str]:
    """Write the conversation as Markdown and JSON to outputs/chats/ (on disk before it is offered)."""
    msgs = conversation(system, history)
    if not any(m["role"] == "user" for m in msgs):
        raise InputError("Nothing to export yet: the conversation is empty.")
    folder = ctx.paths.outputs / "chats"
    folder.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("chat-%Y%m%d-%H%M%S")
    md = [f"# Chat with {model_name}", ""]
    for m in msgs:
        md += [f"**{m['role']}**", "", m["content"], ""]
    md_path, json_path = folder / f"{stem}.md", folder / f"{stem}.json"
    md_path.write_text("\n".join(md), encoding="utf-8")
    json_path.write_text(
        json.dumps({"model": model_name, "messages": msgs}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return [str(md_path), str(json_path)]


def connect_page_load(ctx: AppContext, app: gr.Blocks, chat: dict[str, gr.components.Component]) -> None:
    """On every page load (a reload too), refresh what the page was built with: the model list, the adapter
    folders under runs/ (adapters trained since the studio started) and the adapters attached on the server to
    the chosen model."""

    def refresh(choice, prec, current):
        return (
            gr.Dropdown(choices=model_choices(ctx)),
            gr.Dropdown(choices=adapter_folders(ctx)),
            answer_with_update(ctx, choice, prec, current),
        )

    app.load(
        refresh,
        [chat["model"], chat["precision"], chat["use_adapter"]],
        [chat["model"], chat["adapter_path"], chat["use_adapter"]],
        api_name="chat_refresh",
        queue=False,
        show_progress="hidden",
    )


def build(ctx: AppContext) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks context and wire its events."""
    flags = StopFlags()
    default_precision = "nf4" if ctx.device == "cuda" else "fp32"
    choices = model_choices(ctx)
    with gr.Row():
        model = gr.Dropdown(
            choices=choices,
            value=choices[0][1] if choices else None,
            allow_custom_value=True,
            label="Model (pick one, or type a folder, a .gguf file or a Hugging Face id)",
            elem_id="chat-model",
            scale=4,
        )
        precision = gr.Dropdown(
            list(PRECISIONS), value=default_precision, label="Precision", elem_id="chat-precision", scale=1
        )
        load_btn = gr.Button("Load", elem_id="chat-load", scale=1)
    plan_md = gr.Markdown(elem_id="chat-plan")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chat-history", height=460, buttons=["copy"])
            asked_after = gr.State(None)  # how many Clears the session had when its last question was asked
            side = gr.Chatbot(label="Same prompt without the adapter", elem_id="chat-side", height=300, visible=False)
            user_box = gr.Textbox(
                label="Message",
                placeholder="Type a message and press Enter (Shift+Enter: new line)",
                lines=1,
                max_lines=8,
                elem_id="chat-input",
            )
            with gr.Row():
                send_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                regen_btn = gr.Button("Regenerate", elem_id="chat-regenerate")
                clear_btn = gr.Button("Clear", elem_id="chat-clear")
                export_btn = gr.Button("Export", elem_id="chat-export")
            stats_md = gr.Markdown(elem_id="chat-stats")
            export_files = gr.File(
                label="Exported conversation", file_count="multiple", visible=False, elem_id="chat-export-files"
            )
        with gr.Column(scale=1):
            system = gr.Textbox(label="System prompt", lines=3, elem_id="chat-system")
            with gr.Accordion("Sampling", open=False):
                temperature = gr.Slider(
                    0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)", elem_id="chat-temperature"
                )
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="chat-top-p")
                top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)", elem_id="chat-top-k")
                rep = gr.Slider(0.5, 2, value=1.1, step=0.05, label="Repetition penalty", elem_id="chat-rep")
                max_new = gr.Number(value=512, precision=0, label="Max new tokens", elem_id="chat-max-new")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="chat-seed")
                context = gr.Number(
                    value=0, precision=0, label="Context length (0 = the model's)", elem_id="chat-context"
                )
            with gr.Accordion("LoRA adapters", open=True):
                adapter_path = gr.Dropdown(
                    choices=adapter_folders(ctx),
                    allow_custom_value=True,
                    label="Adapter folder",
                    elem_id="chat-adapter-path",
                )
                with gr.Row():
                    attach_btn = gr.Button("Attach", elem_id="chat-attach")
                    detach_btn = gr.Button("Detach", elem_id="chat-detach")
                use_adapter = gr.Dropdown(
                    choices=[NO_ADAPTER], value=NO_ADAPTER, label="Answer with", elem_id="chat-use-adapter"
                )
                side_by_side = gr.Checkbox(
                    label="Side by side: also answer without the adapter", elem_id="chat-side-by-side"
                )
                adapter_md = gr.Markdown(elem_id="chat-adapter-status")

    def params_from(t, p, k, r, n, s, c) -> ChatParams:
        def whole(value, name):
            if value is None:
                raise InputError(f"{name} must be a whole number.")
            return int(value)

        params = ChatParams(
            max_new_tokens=whole(n, "Max new tokens"),
            temperature=float(t),
            top_p=float(p),
            top_k=whole(k, "Top-k"),
            repetition_penalty=float(r),
            seed=whole(s, "Seed"),
            context_len=whole(c, "Context length"),
        )
        params.check_inputs()
        return params

    def workload_for(c) -> Workload:
        return Workload(context_len=max(int(c or 0), 0))

    @msg.user_errors
    def show_plan(choice, prec, c):
        if not choice:
            return ""
        spec = resolve_spec(ctx, choice, prec)
        plan = ctx.manager.plan(spec, workload_for(c))
        est = plan.estimate
        return (
            f"{plan.message} Estimate: {fmt_bytes(est.total)} = weights {fmt_bytes(est.weights_bytes)} + "
            f"KV cache and activations {fmt_bytes(est.runtime_bytes)} ({est.method})."
        )

    @msg.user_errors
    def load(choice, prec, c, request: gr.Request, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - downloads
        spec = resolve_spec(ctx, choice, prec)
        if not str(choice).startswith(STARTER_PREFIX):  # the bundled starter is anyone's; other models the owner's
            require_loaded_or_owner(ctx.security, ctx.manager, spec, request)
        plan = ctx.manager.plan(spec, workload_for(c))
        with ctx.manager.acquire(spec, workload_for(c)):
            pass
        rec = next(r for r in ctx.manager.records() if r.key == spec.key)
        return f"{plan.message}\n\n{spec.name} is ready: {fmt_bytes(rec.measured_bytes)} measured."

    def stream_reply(spec, msgs, params, adapter, stop, history, side_history, notice_prefix=""):
        """Stream into history[-1]; yields (history, side, stats)."""
        stats_text = notice_prefix
        for chunk in ctx.chat.stream(spec, msgs, params, adapter=adapter, should_stop=stop.is_set):
            history[-1]["content"] = chunk.text
            if chunk.notice:
                stats_text = f"{notice_prefix}{chunk.notice} "
            if chunk.done and chunk.stats:
                stats_text += chunk.stats.summary()
            yield history, side_history, stats_text

    def respond(
        history,
        side_history,
        choice,
        prec,
        sys_prompt,
        t,
        p,
        k,
        r,
        n,
        s,
        c,
        adapter,
        both,
        asked_after,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - a model picked but not yet downloaded shows its download
    ):
        """Generator: the reply streams into the chatbot. A reply that fails before writing anything leaves the
        conversation as it was (the user's message stays, no empty bubble to feed the next prompt); what a reply
        wrote before failing is kept."""
        added = side_added = False  # whether this call put a reply bubble in the conversation / the side pane
        session = session_key(request)
        if asked_after is not None and asked_after != flags.clears(session):
            yield (
                gr.skip(),
                gr.skip(),
                gr.skip(),
            )  # asked before a Clear, and waited in the queue: the chat stays clear
            return
        with flags.running(session):  # Clear waits for this to end
            try:
                spec = resolve_spec(ctx, choice, prec)
                if not str(choice).startswith(STARTER_PREFIX):  # the bundled starter is anyone's, as on /v1
                    require_loaded_or_owner(ctx.security, ctx.manager, spec, request)
                params = params_from(t, p, k, r, n, s, c)
                adapter = None if adapter in (None, "", NO_ADAPTER) else adapter
                msgs = conversation(sys_prompt, history)
                if not msgs or msgs[-1]["role"] != "user" or blank(msgs[-1]["content"]):
                    raise InputError("Type a message first: the message is empty.")
                stop = flags.event(session)
                stop.clear()
                prefix = ""
                if not any(rec.key == spec.key and rec.state == "loaded" for rec in ctx.manager.records()):
                    prefix = ctx.manager.plan(spec).message + " "
                history, added = history + [{"role": "assistant", "content": ""}], True
                yield history, side_history, prefix + "Thinking…"
                with_stats = ""
                for _, _, with_stats in stream_reply(spec, msgs, params, adapter, stop, history, side_history, prefix):
                    yield history, side_history, with_stats
                if both and adapter:
                    # both replies' stats stay on the page: the base reply's must not overwrite the adapter's
                    with_stats = with_stats.removeprefix(prefix)
                    side_history = [dict(m) for m in history[:-1]] + [{"role": "assistant", "content": ""}]
                    side_added, without_stats = True, ""
                    for _, _, without_stats in stream_reply(spec, msgs, params, None, stop, side_history, None):
                        both_stats = msg.CHAT_SIDE_STATS.format(
                            adapter=adapter,
                            with_stats=with_stats,
                            without_stats=without_stats or msg.CHAT_SIDE_WAITING,
                        )
                        yield history, side_history, prefix + both_stats
            except Exception as exc:  # noqa: BLE001 - the page gets one line; the console gets the traceback
                if isinstance(exc, StudioError):
                    error, line = str(exc), exc.message
                else:
                    msg.log.exception("unexpected error while answering")
                    error = line = msg.UNEXPECTED.format(error=f"{type(exc).__name__}: {exc}"[:300])
                shown = drop_empty_reply(history, added), drop_empty_reply(side_history, side_added)
                yield *shown, msg.CHAT_NO_REPLY.format(error=line)
                raise gr.Error(error) from None

    def add_user(text, history, request: gr.Request):
        if blank(text):
            raise gr.Error("Type a message first: the message is empty.")
        return "", history + [{"role": "user", "content": text}], flags.clears(session_key(request))

    def request_stop(request: gr.Request) -> None:
        flags.event(session_key(request)).set()  # the reply ends after its current token

    def drop_last_reply(history, request: gr.Request):
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":
            history.pop()
        if not history:
            raise gr.Error("Nothing to regenerate yet.")
        return history, flags.clears(session_key(request))

    @msg.user_errors
    def attach(choice, prec, folder, request: gr.Request):
        require_owner(ctx.security, request, "attach adapters from server folders")
        spec = resolve_spec(ctx, choice, prec)
        if not (folder or "").strip():
            raise InputError("Pick or type an adapter folder first.")
        name = ctx.chat.attach_adapter(spec, folder.strip(), name=adapter_name(folder.strip()))
        names = ctx.chat.attached(spec)
        return (
            gr.Dropdown(choices=[NO_ADAPTER, *names], value=name),
            f"Attached {name} to {spec.name} (the base stays loaded).",
        )

    @msg.user_errors
    def detach(choice, prec, current, request: gr.Request):
        require_owner(ctx.security, request, "detach adapters")
        spec = resolve_spec(ctx, choice, prec)
        if current in (None, "", NO_ADAPTER):
            raise InputError("Pick the adapter to detach in 'Answer with'.")
        ctx.chat.detach_adapter(spec, current)
        return (
            gr.Dropdown(choices=[NO_ADAPTER, *ctx.chat.attached(spec)], value=NO_ADAPTER),
            f"Detached {current}; {spec.name} answers as before.",
        )

    @msg.user_errors
    def export(history, sys_prompt, choice, prec):
        name = resolve_spec(ctx, choice, prec).name if choice else "unknown model"
        return gr.File(value=export_conversation(ctx, sys_prompt, history or [], name), visible=True)

    gen_inputs = [
        chatbot,
        side,
        model,
        precision,
        system,
        temperature,
        top_p,
        top_k,
        rep,
        max_new,
        seed,
        context,
        use_adapter,
        side_by_side,
        asked_after,
    ]
    gen_outputs = [chatbot, side, stats_md]
    gpu = {"concurrency_id": "gpu", "concurrency_limit": 1}
    light = {"queue": False, "show_progress": "hidden"}
    # queued (errors only reach the page from queued events) in a lane of their own that never waits for the GPU
    quick = {"concurrency_id": "ui", "concurrency_limit": None, "show_progress": "hidden"}
    # progress (a download) and errors show on the stats line: the conversation stays in view, after an error too
    replying = {"show_progress_on": [stats_md], **gpu}
    asked = [user_box, chatbot, asked_after]
    send_btn.click(add_user, [user_box, chatbot], asked, api_name="chat_add_user", **quick).success(
        respond, gen_inputs, gen_outputs, api_name="chat", **replying
    )
    user_box.submit(add_user, [user_box, chatbot], asked, api_visibility="private", **quick).success(
        respond, gen_inputs, gen_outputs, api_visibility="private", **replying
    )
    regen_btn.click(drop_last_reply, [chatbot], [chatbot, asked_after], **quick).success(
        respond, gen_inputs, gen_outputs, api_name="chat_regenerate", **replying
    )
    # queued (so it carries the same session as the reply) but in its own lane: never waits behind the GPU
    stop_btn.click(request_stop, None, None, api_name="chat_stop", **quick)

    def clear_chat(request: gr.Request):
        flags.clear(session_key(request), timeout=30)  # a reply being written ends, and its last message goes first
        return [], [], ""

    # no `cancels=`: a cancelled reply's last message can still arrive after Clear's; waiting for it is what orders them
    clear_btn.click(clear_chat, None, [chatbot, side, stats_md], api_name="chat_clear", **quick)
    export_btn.click(export, [chatbot, system, model, precision], [export_files], api_name="chat_export")
    model.change(show_plan, [model, precision, context], [plan_md], api_name="chat_plan", **light)
    for widget in (precision, context):
        widget.change(show_plan, [model, precision, context], [plan_md], **light)
    for widget in (model, precision):  # another model (or precision) is another base: offer its adapters
        widget.change(
            lambda choice, prec, current: (
                gr.Dropdown(choices=adapter_folders(ctx)),
                answer_with_update(ctx, choice, prec, current),
            ),
            [model, precision, use_adapter],
            [adapter_path, use_adapter],
            api_visibility="private",
            **light,
        )
    load_btn.click(load, [model, precision, context], [plan_md], api_name="chat_load", **gpu)
    attach_btn.click(
        attach, [model, precision, adapter_path], [use_adapter, adapter_md], api_name="chat_attach", **gpu
    )
    detach_btn.click(detach, [model, precision, use_adapter], [use_adapter, adapter_md], api_name="chat_detach", **gpu)
    side_by_side.change(lambda on: gr.Chatbot(visible=bool(on)), [side_by_side], [side], **light)
    return {
        "model": model,
        "precision": precision,
        "load": load_btn,
        "chatbot": chatbot,
        "input": user_box,
        "send": send_btn,
        "stop": stop_btn,
        "regenerate": regen_btn,
        "clear": clear_btn,
        "stats": stats_md,
        "adapter_path": adapter_path,
        "use_adapter": use_adapter,
    }
