"""Datasets dropped into the page: read the file, detect its shape, validate row by row, normalise to samples.

Formats: .txt (one sample per line, or blocks separated by blank lines), .csv, .tsv, .json, .jsonl, .parquet.
Shapes: plain text (a `text` column), instruction/response (alpaca: `instruction`, optional `input`, `output`, and
LLaMA-Factory's optional `history` of earlier [user, assistant] pairs),
chat (openai `messages` with role/content, or sharegpt `conversations` with from/value); and the preference shapes
(pairs: prompt/chosen/rejected, KTO: prompt/completion/label; see pref_data.py). When the shape cannot be
told from the column names, `NeedsColumns` says which columns there are so the page can ask.

Every SFT shape ends as the same plain sample: `{"text": str}` or `{"messages": [{"role", "content"}, ...]}`; the
preference shapes as TRL's conversational rows (pref_data.py).
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.errors import InputError
from studio.text import json_limit

MIB = 1024**2
UPLOAD_LIMIT_BYTES = 200 * MIB  # larger datasets are refused before they are read
FORMATS = (".txt", ".csv", ".tsv", ".json", ".jsonl", ".parquet")
SHAPES = ("text", "alpaca", "messages", "sharegpt", "preference", "kto")
SHAPE_LABELS = {
    "text": "plain text",
    "alpaca": "instruction / response (alpaca)",
    "messages": "chat messages (openai)",
    "sharegpt": "chat conversations (sharegpt)",
    "preference": "preference pairs (prompt / chosen / rejected)",
    "kto": "rated completions (prompt / completion / label, KTO)",
}
# Column names recognised for each role, most specific first.
TEXT_NAMES = ("text", "content", "document", "sentence", "body")
INSTRUCTION_NAMES = ("instruction", "prompt", "question", "query", "input_text")
INPUT_NAMES = ("input", "context")
OUTPUT_NAMES = ("output", "response", "answer", "completion", "target")
SYSTEM_NAMES = ("system", "system_prompt")
HISTORY_NAMES = ("history",)  # LLaMA-Factory's alpaca: [[user, assistant], ...] turns before the instruction
HISTORY_TIP = 'Give earlier turns as [["question", "answer"], ...], as LLaMA-Factory\'s alpaca format does.'
MESSAGES_NAMES = ("messages", "conversation", "conversations", "chat", "dialog")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant"}
SHAREGPT_ROLES |= {"system": "system", "bing": "assistant", "chatgpt": "assistant", "bard": "assistant"}
CHAT_ROLES = ("system", "user", "assistant")
SKIP_TIP = "Fix the row, or tick 'Skip bad rows' to train without it."


class DatasetError(InputError):
    """A dataset cannot be used as it is. `row` names the 1-based row (or line) at fault, when there is one."""

    def __init__(self, message: str, tip: str = "", row: int | None = None, skippable: bool = False) -> None:
        super().__init__(message, tip)
        self.row = row
        self.skippable = skippable  # True when 'skip bad rows' would get past it


class NeedsColumns(InputError):
    """The columns do not say which shape the data has: the page asks the user to pick them."""

    def __init__(self, name: str, columns: list[str]) -> None:
        super().__init__(
            f"{name}: cannot tell which columns to train on (columns: {', '.join(columns)}).",
            "Pick the shape and the columns under 'Columns', then analyse again.",
        )
        self.columns = columns


@dataclass(frozen=True)
class ColumnMap:
    """Which columns make a sample. Empty names are unused; `shape` decides which ones are needed."""

    shape: str  # text | alpaca | messages | sharegpt | preference | kto
    text: str = ""  # text: the column with the whole sample
    instruction: str = ""  # alpaca: the instruction (the user turn)
    input: str = ""  # alpaca: optional extra input appended to the instruction
    output: str = ""  # alpaca: the response (the assistant turn)
    system: str = ""  # alpaca: optional system prompt column
    history: str = ""  # alpaca: optional column of earlier [user, assistant] pairs, turns before the instruction
    messages: str = ""  # messages / sharegpt: the column with the list of turns
    prompt: str = ""  # preference / kto: the prompt (text or messages); preference without it: HH conversations
    chosen: str = ""  # preference: the better reply (or the whole conversation ending with it)
    rejected: str = ""  # preference: the worse reply (or the whole conversation ending with it)
    completion: str = ""  # kto: the rated reply
    label: str = ""  # kto: true when the completion is good, false when it is bad

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InputError(f"Shape must be one of {', '.join(SHAPES)}, not {self.shape!r}.")

    def required(self) -> dict[str, str]:
        """The fields this shape needs, by role -> column name."""
        if self.shape == "text":
            return {"text": self.text}
        if self.shape == "alpaca":
            return {"instruction": self.instruction, "output": self.output}
        if self.shape == "preference":
            return {"chosen": self.chosen, "rejected": self.rejected}
        if self.shape == "kto":
            return {"prompt": self.prompt, "completion": self.completion, "label": self.label}
        return {"messages": self.messages}

    def used_columns(self) -> list[str]:
        names = [self.text, self.instruction, self.input, self.output, self.system, self.history, self.messages]
        names += [self.prompt, self.chosen, self.rejected, self.completion, self.label]
        return [n for n in names if n]


@dataclass(frozen=True)
class Table:
    """What a file holds before it is shaped: rows as dicts, the column names, and what was skipped."""

    name: str
    format: str
    rows: list[dict[str, Any]]
    columns: list[str]
    line_numbers: list[int] = field(default_factory=list)  # the file line of each row (jsonl, txt), else empty
    skipped: tuple[str, ...] = ()  # one message per skipped bad row


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to tokenise: normalised samples, and how they were found."""

    name: str
    format: str
    mapping: ColumnMap
    columns: list[str]
    samples: list[dict[str, Any]]
    skipped: tuple[str, ...] = ()  # bad rows skipped on request
    empty: int = 0  # rows that held nothing once shaped (dropped)

    @property
    def shape_label(self) -> str:
        return SHAPE_LABELS[self.mapping.shape]

    def summary(self) -> str:
        parts = [f"{len(self.samples)} rows", self.shape_label, self.format.lstrip(".")]
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad rows skipped")
        if self.empty:
            parts.append(f"{self.empty} empty rows dropped")
        return ", ".join(parts)


# ----- reading files --------------------------------------------------------------------------------------------


def check_size(path: Path, limit: int = UPLOAD_LIMIT_BYTES) -> int:
    size = path.stat().st_size
    if size > limit:
        raise DatasetError(
            f"{path.name} is {size / MIB:.0f} MB, over the {limit / MIB:.0f} MB upload limit for datasets.",
            "Use a smaller sample of it, or split it into several files.",
        )
    return size


def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 text (a BOM is fine); binary junk and other encodings get a message that names the problem."""
    if not data.strip():
        raise DatasetError(f"{path.name} is empty.", "Drop a file with at least one example in it.")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(
            f"{path.name} is UTF-16 text; datasets must be UTF-8.", "Save it again as UTF-8 (most editors can)."
        )
    head = data[:8192]
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    if b"\x00" in head or controls > len(head) * 0.1:
        raise DatasetError(
            f"{path.name} looks like binary data, not a {path.suffix or 'text'} dataset.",
            f"Drop a text file ({', '.join(FORMATS)}).",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{path.name} is not UTF-8: byte 0x{data[exc.start]:02X} on line {line} cannot be read "
            "(the file is probably Latin-1 or Windows-1252).",
            "Save it again as UTF-8 (most editors can).",
            row=line,
        ) from None


def read_table(path: Path | str, *, skip_bad: bool = False, limit: int = UPLOAD_LIMIT_BYTES) -> Table:
    """Read a dataset file into rows. Bad JSONL lines name their line number; `skip_bad` drops them instead."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.", "Drop the dataset file into the page again.")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DatasetError(
            f"{path.name}: {suffix or 'no extension'} is not a dataset format the studio reads.",
            f"Use one of {', '.join(FORMATS)}.",
        )
    check_size(path, limit)
    data = path.read_bytes()
    if suffix == ".parquet":
        return _read_parquet(path, data)
    text = decode_text(path, data)
    if suffix == ".txt":
        return _read_txt(path, text)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _read_json(path, text)
    return _read_jsonl(path, text, skip_bad)


def _read_txt(path: Path, text: str) -> Table:
    """Blank-line separated blocks when the file has blank lines between text, else one sample per line."""
    lines = text.splitlines()
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    if len(blocks) > 1 and any(len(b) > 1 for _, b in blocks):  # blank lines separate multi-line samples
        rows = [{"text": "\n".join(b)} for _, b in blocks]
        numbers = [n for n, _ in blocks]
    else:
        pairs = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        rows = [{"text": line} for _, line in pairs]
        numbers = [n for n, _ in pairs]
    return Table(path.name, ".txt", rows, ["text"], numbers)


def _read_csv(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        records = list(reader)
    except csv.Error as exc:
        raise DatasetError(
            f"{path.name} is not valid {'TSV' if delimiter == chr(9) else 'CSV'} on line {reader.line_num}: {exc}.",
            "Check the quoting on that line.",
            row=reader.line_num,
        ) from None
    records = [r for r in records if any(cell.strip() for cell in r)]
    if not records:
        raise DatasetError(f"{path.name} is empty.", "Drop a file with at least one example in it.")
    header = [h.strip() for h in records[0]]
    if not any(header) or len(set(header)) != len(header):
        raise DatasetError(
            f"{path.name}: the first line must name each column once (it reads {', '.join(header) or 'nothing'}).",
            "Add a header line such as: instruction,output",
        )
    rows = []
    for cells in records[1:]:
        rows.append({h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header)})
    if not rows:
        raise DatasetError(f"{path.name} has a header but no rows.", "Add at least one example under the header.")
    return Table(path.name, path.suffix.lower(), rows, header)


def _read_json(path: Path, text: str) -> Table:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        limit = json_limit(exc)
        if limit or not isinstance(exc, json.JSONDecodeError):
            raise DatasetError(f"{path.name} cannot be read: {limit or exc}.") from None
        raise DatasetError(
            f"{path.name} is not valid JSON: {exc.msg} on line {exc.lineno}, column {exc.colno}.",
            "If it has one object per line, name it .jsonl instead.",
            row=exc.lineno,
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list) or not data:
        raise DatasetError(
            f"{path.name}: expected a JSON list of objects (one per example).",
            'Example: [{"instruction": "...", "output": "..."}]',
        )
    for index, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DatasetError(
                f"{path.name}: item {index} is {type(row).__name__}, not an object.", "Every item must be an object."
            )
    return Table(path.name, ".json", data, _columns(data))


def _read_jsonl(path: Path, text: str, skip_bad: bool) -> Table:
    rows, numbers, skipped = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"it is a JSON {type(row).__name__}, not an object")
        except (ValueError, RecursionError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            limit = json_limit(exc)
            problem = (
                f"line {number} cannot be read: {limit}" if limit else f"line {number} is not a JSON object ({why})"
            )
            if not skip_bad:
                raise DatasetError(f"{path.name}: {problem}.", SKIP_TIP, row=number, skippable=True) from None
            skipped.append(problem)
            continue
        rows.append(row)
        numbers.append(number)
    if not rows:
        raise DatasetError(f"{path.name} has no valid JSON lines.", "Each line must hold one JSON object.")
    return Table(path.name, ".jsonl", rows, _columns(rows), numbers, tuple(skipped))


def _read_parquet(path: Path, data: bytes) -> Table:
    if not data:
        raise DatasetError(f"{path.name} is empty.", "Drop a file with at least one example in it.")
    if not (data[:4] == b"PAR1" and data[-4:] == b"PAR1"):
        raise DatasetError(
            f"{path.name} is not a Parquet file (no PAR1 magic bytes).", "Export it again as Parquet, or use .jsonl."
        )
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "Reading .parquet needs the pyarrow package.", "pip install pyarrow, or convert to .jsonl."
        ) from None
    try:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many error types for damaged files
        raise DatasetError(f"{path.name}: the Parquet file cannot be read ({exc}).", "Export it again.") from None
    if not rows:
        raise DatasetError(f"{path.name} has no rows.", "Drop a file with at least one example in it.")
    return Table(path.name, ".parquet", rows, _columns(rows))


def _columns(rows: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


# ----- shapes ---------------------------------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        float(value)
        return False  # a number is not something to train on
    except ValueError:
        return True


def usable_columns(table: Table) -> list[str]:
    """Columns that hold text or lists of turns in at least one row."""
    sample = table.rows[:200]
    return [c for c in table.columns if any(_is_text(r.get(c)) or isinstance(r.get(c), list) for r in sample)]


def _pick(columns: list[str], names: tuple[str, ...]) -> str:
    lower = {c.lower(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    return ""


def detect_mapping(table: Table) -> ColumnMap:
    """The shape and columns from the column names and the first rows; NeedsColumns when it cannot tell."""
    from studio.training import pref_data

    found = pref_data.detect(table)  # before the others: 'prompt' / 'completion' would read as alpaca
    if found is not None:
        return found
    usable = usable_columns(table)
    if not usable:
        named = [c for c in table.columns if c.lower() in (*TEXT_NAMES, *OUTPUT_NAMES, *MESSAGES_NAMES)]
        if named:  # the right columns, all empty: shaping says that the rows are empty
            usable = list(table.columns)
        else:
            raise DatasetError(
                f"{table.name}: no usable column: {', '.join(table.columns) or 'none'} hold only numbers or nothing.",
                "Datasets need a text column (text), instruction/output columns, or a messages column.",
            )
    turns = _pick(usable, MESSAGES_NAMES)
    if turns and any(isinstance(r.get(turns), list) for r in table.rows[:50]):
        first = next((r[turns] for r in table.rows if isinstance(r.get(turns), list) and r[turns]), [])
        item = first[0] if first and isinstance(first[0], dict) else {}
        shape = "sharegpt" if ("from" in item or "value" in item) else "messages"
        return ColumnMap(shape, messages=turns)
    instruction, output = _pick(usable, INSTRUCTION_NAMES), _pick(usable, OUTPUT_NAMES)
    if instruction and output:
        return ColumnMap(
            "alpaca",
            instruction=instruction,
            input=_pick(table.columns, INPUT_NAMES),
            output=output,
            system=_pick(table.columns, SYSTEM_NAMES),
            history=_pick(table.columns, HISTORY_NAMES),
        )
    text = _pick(usable, TEXT_NAMES)
    if text:
        return ColumnMap("text", text=text)
    if len(usable) == 1 and len(table.columns) == 1:
        return ColumnMap("text", text=usable[0])
    raise NeedsColumns(table.name, table.columns)


def _string(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _content(value: Any) -> str | None:
    """A turn's content: a string, or openai content parts [{"type": "text", "text": ...}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def _history(value: Any, column: str, where: str) -> list[dict[str, str]]:
    """An alpaca row's earlier turns: [[user, assistant], ...] (a list, or JSON text in a CSV cell) as messages."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise DatasetError(
                f"{where}: '{column}' is text, not a list of [user, assistant] pairs.", HISTORY_TIP, skippable=True
            ) from None
    if not isinstance(value, (list, tuple)):
        raise DatasetError(
            f"{where}: '{column}' must be a list of [user, assistant] pairs, not {type(value).__name__}.",
            HISTORY_TIP,
            skippable=True,
        )
    messages = []
    for index, pair in enumerate(value, 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            shown = json.dumps(pair, default=str)
            raise DatasetError(
                f"{where}: '{column}' turn {index} must be a [user, assistant] pair of texts, not "
                f"{shown if len(shown) <= 60 else shown[:57] + '...'}.",
                HISTORY_TIP,
                skippable=True,
            )
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def shape_row(row: dict[str, Any], mapping: ColumnMap, where: str) -> dict[str, Any] | None:
    """One row as a sample, or None when it holds nothing. Raises DatasetError naming the row and the field."""
    for role, column in mapping.required().items():
        if not column:
            raise DatasetError(f"Pick the {role} column for the {SHAPE_LABELS[mapping.shape]} shape.")
        if column not in row:
            raise DatasetError(f"{where} has no '{column}' field.", SKIP_TIP, skippable=True)
    if mapping.shape in ("preference", "kto"):
        from studio.training import pref_data

        return pref_data.shape_row(row, mapping, where)
    if mapping.shape == "text":
        text = _string(row.get(mapping.text))
        return {"text": text} if text.strip() else None
    if mapping.shape == "alpaca":
        instruction = _string(row.get(mapping.instruction)).strip()
        extra = _string(row.get(mapping.input)).strip() if mapping.input else ""
        output = _string(row.get(mapping.output)).strip()
        system = _string(row.get(mapping.system)).strip() if mapping.system else ""
        if not instruction and not output:
            return None
        if not output:
            raise DatasetError(f"{where} has an empty '{mapping.output}' (the response).", SKIP_TIP, skippable=True)
        user = f"{instruction}\n\n{extra}" if instruction and extra else (instruction or extra)
        messages = [{"role": "system", "content": system}] if system else []
        messages += _history(row.get(mapping.history), mapping.history, where) if mapping.history else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return {"messages": messages}
    turns = row.get(mapping.messages)
    if isinstance(turns, str):  # a CSV cell or a parquet string column holding JSON
        try:
            turns = json.loads(turns)
        except (ValueError, RecursionError):  # not JSON, or JSON beyond what Python reads
            raise DatasetError(
                f"{where}: '{mapping.messages}' is text, not a list of turns.", SKIP_TIP, skippable=True
            ) from None
    if not isinstance(turns, list):
        raise DatasetError(f"{where}: '{mapping.messages}' is not a list of turns.", SKIP_TIP, skippable=True)
    role_key, content_key = ("from", "value") if mapping.shape == "sharegpt" else ("role", "content")
    messages = []
    for index, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DatasetError(
                f"{where}: turn {index} needs '{role_key}' and '{content_key}'.", SKIP_TIP, skippable=True
            )
        raw_role = str(turn[role_key]).lower()
        role = SHAREGPT_ROLES.get(raw_role) if mapping.shape == "sharegpt" else raw_role
        if role not in CHAT_ROLES:
            raise DatasetError(
                f"{where}: turn {index} has role '{turn[role_key]}' (expected {', '.join(CHAT_ROLES)}).",
                SKIP_TIP,
                skippable=True,
            )
        content = _content(turn[content_key])
        if content is None:
            raise DatasetError(f"{where}: turn {index} has no text content.", SKIP_TIP, skippable=True)
        messages.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in messages):
        return None
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DatasetError(f"{where} has no assistant turn to learn from.", SKIP_TIP, skippable=True)
    return {"messages": messages}


def shape_table(table: Table, mapping: ColumnMap, *, skip_bad: bool = False) -> Dataset:
    """Every row as a sample. Bad rows raise (naming the row) unless `skip_bad`; empty rows are dropped."""
    missing = [c for c in mapping.used_columns() if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{table.name} has no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(table.columns)}).",
            "Pick columns the file has.",
        )
    samples, skipped, empty = [], list(table.skipped), 0
    for index, row in enumerate(table.rows):
        where = f"line {table.line_numbers[index]}" if table.line_numbers else f"row {index + 1}"
        try:
            sample = shape_row(row, mapping, where)
        except DatasetError as exc:
            if not (skip_bad and exc.skippable):
                raise
            skipped.append(exc.message)
            continue
        if sample is None:
            empty += 1
        else:
            samples.append(sample)
    if not samples:
        raise DatasetError(
            f"{table.name}: all {len(table.rows)} rows are empty once shaped as {SHAPE_LABELS[mapping.shape]}.",
            "Check the column choice: the chosen columns hold no text.",
        )
    return Dataset(table.name, table.format, mapping, table.columns, samples, tuple(skipped), empty)


def load_dataset(
    path: Path | str,
    mapping: ColumnMap | None = None,
    *,
    skip_bad: bool = False,
    limit: int = UPLOAD_LIMIT_BYTES,
    name: str | None = None,
) -> Dataset:
    """Read, detect (unless `mapping` is given) and shape a dataset file."""
    table = read_table(path, skip_bad=skip_bad, limit=limit)
    if name:
        table = replace(table, name=name)
    return shape_table(table, mapping or detect_mapping(table), skip_bad=skip_bad)


def split(samples: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split into train and eval; at least one row of each when there are two or more rows."""
    if not 0 <= eval_fraction < 1:
        raise InputError(f"The evaluation share must be between 0 and 0.9, not {eval_fraction}.")
    if eval_fraction == 0 or len(samples) < 2:
        return list(samples), []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(samples) - 1, max(1, round(len(samples) * eval_fraction)))
    eval_ids = set(order[:n_eval])
    train = [s for i, s in enumerate(samples) if i not in eval_ids]
    return train, [samples[i] for i in sorted(eval_ids)]


def write_jsonl(path: Path, samples: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
