"""Problem files as researchers have them: rows -> :class:`grpo.task.Example`, validated at load time.

Formats read (``read_rows``), chosen by what ``path`` is, never by a download:

- a ``.jsonl`` file (one JSON object a line), a ``.json`` file holding a JSON array of objects, a ``.parquet`` file
  (pyarrow; nested columns come back as dicts and lists, so verl's parquet reads as it is);
- a directory written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``, local only; a ``DatasetDict`` needs ``split``).

Row schema (``RowFormat``): ``prompt_field`` / ``answer_field`` / ``solution_field`` name a column, or a nested
value with a dotted path (verl: ``answer_field=reward_model.ground_truth``). The prompt is either a string or a
list of chat messages (``{"role": ..., "content": ...}``, verl's and TRL's conversational format). The template
(``prompt_template``, literal ``{prompt}`` placeholder) wraps a string prompt, or the content of a message
list's last user turn. A message-list prompt keeps its turns in ``Example.messages``: a policy whose tokenizer
has a chat template renders them with it (``grpo/model.py``); without one (or with ``model.chat_template=never``)
the model reads ``Example.prompt``, the turns' contents joined by blank lines (roles are dropped: there is no
tokenizer-independent way to write them).

Every row is checked when the file is read: a row that is not an object, lacks a field, has an empty or
non-string prompt, a malformed message list, or an answer that is not a string or a number raises
``ValueError`` naming the file and the 1-based row (the line number for JSONL). The row's other columns are kept
in ``Example.meta["columns"]`` (what TRL passes reward functions as keyword arguments).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.task import Example

DEFAULT_PROMPT_TEMPLATE = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
_MISSING = object()


@dataclass(frozen=True)
class RowFormat:
    """How a row becomes an Example."""

    prompt_field: str = "problem"
    """Column (or dotted path) holding the problem: a string, or a list of chat messages."""
    answer_field: str = "answer"
    """Column (or dotted path, e.g. verl's ``reward_model.ground_truth``) holding the reference answer."""
    solution_field: str | None = None
    """Column with a worked solution for SFT (None: the target is ``\\boxed{<answer>}``)."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """Wraps the problem text (a message list: its last user turn); ``{prompt}`` is replaced literally."""
    split: str | None = None
    """The split of a ``save_to_disk`` DatasetDict directory (None: the directory must hold one Dataset)."""
    source: str = "math_file"
    """Who reads (prefixes the errors)."""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.prompt_template:
            raise ValueError(
                f"{self.source}: prompt_template must contain '{{prompt}}', got {self.prompt_template!r}"
            )
        for key in ("prompt_field", "answer_field"):
            if not getattr(self, key):
                raise ValueError(f"{self.source}: {key} must be a non-empty column name")


def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` directory (a Dataset's state.json or a DatasetDict's dict json)."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("state.json", "dataset_dict.json", "dataset_info.json")
    )


def _read_dataset_dir(path: Path, fmt: RowFormat) -> list[tuple[int, Any]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # load_from_disk reads files; nothing else may
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as exc:
        raise ValueError(
            f"{fmt.source}: {path} is a datasets directory; reading it needs the datasets package "
            "(pip install quadrl[datasets])"
        ) from exc
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if fmt.split is None or fmt.split not in data:
            raise ValueError(
                f"{fmt.source}: {path} holds the splits {sorted(data)}; choose one with split=<name> "
                f"(got {fmt.split!r})"
            )
        data = data[fmt.split]
    return list(enumerate(data.to_list(), start=1))


def read_rows(path: Path, fmt: RowFormat) -> list[tuple[int, Any]]:
    """(1-based row number, decoded row) pairs; undecodable rows raise ValueError naming file and row."""
    if is_dataset_dir(path):
        return _read_dataset_dir(path, fmt)
    if not path.is_file():
        raise FileNotFoundError(f"{fmt.source}: no such file: {path}")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is an optional extra
            raise ImportError(
                f"{fmt.source}: reading {path} needs pyarrow (pip install quadrl[parquet])"
            ) from exc
        return list(enumerate(pq.read_table(path).to_pylist(), start=1))
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{fmt.source}: {path}: not valid JSON ({exc})") from exc
        return list(enumerate(rows, start=1))
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{fmt.source}: {path}: row {number} is not valid JSON ({exc.msg})") from exc
    return out


def field_value(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]``, or the nested value of a dotted path (``reward_model.ground_truth``); _MISSING if absent.
    A column whose own name contains dots wins over the path."""
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _messages(value: list[Any], bad: Any, field: str) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise bad(f"field {field!r}: message {i} is not a {{'role', 'content'}} object")
        if not isinstance(message.get("content"), str):
            raise bad(f"field {field!r}: message {i} has no string 'content'")
        turns.append((message["role"], message["content"]))
    if not any(role == "user" and content.strip() for role, content in turns):
        raise bad(f"field {field!r}: the message list has no non-empty user turn")
    return turns


def to_example(path: Path, number: int, row: Any, fmt: RowFormat) -> Example:
    """The Example of one row (see the module docstring for the checks)."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{fmt.source}: {path}: row {number}: {why}")

    if not isinstance(row, Mapping):
        raise bad(f"expected a JSON object, got {type(row).__name__}")
    names = (fmt.prompt_field, fmt.answer_field) + ((fmt.solution_field,) if fmt.solution_field else ())
    values = {name: field_value(row, name) for name in names}
    for name, value in values.items():
        if value is _MISSING:
            raise bad(f"missing field {name!r} (has {sorted(map(str, row))[:10]})")
    problem, answer = values[fmt.prompt_field], values[fmt.answer_field]
    turns: list[tuple[str, str]] | None = None
    if isinstance(problem, list):
        turns = _messages(problem, bad, fmt.prompt_field)
        last = max(i for i, (role, content) in enumerate(turns) if role == "user" and content.strip())
        problem = turns[last][1]
        turns[last] = ("user", fmt.prompt_template.replace("{prompt}", problem))
    elif not isinstance(problem, str) or not problem.strip():
        raise bad(
            f"field {fmt.prompt_field!r} must be a non-empty string or a list of chat messages, got "
            f"{type(problem).__name__}"
        )
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise bad(f"field {fmt.answer_field!r} must be a string or a number, got {type(answer).__name__}")
    answer = str(answer).strip()
    if not answer:
        raise bad(f"field {fmt.answer_field!r} is empty")
    if fmt.solution_field:
        solution = values[fmt.solution_field]
        if not isinstance(solution, str):
            raise bad(f"field {fmt.solution_field!r} must be a string, got {type(solution).__name__}")
    else:
        solution = "\\boxed{" + answer + "}"
    columns = {k: v for k, v in row.items() if k != fmt.prompt_field}
    if turns is None:
        prompt = fmt.prompt_template.replace("{prompt}", problem)
    else:
        prompt = "\n\n".join(content for _, content in turns)
    return Example(
        prompt=prompt,
        answer=answer,
        target=solution,
        meta={"problem": problem, "row": number, "file": str(path), "columns": columns},
        messages=tuple(turns) if turns is not None else None,
    )


def load_examples(path: Path, fmt: RowFormat) -> list[Example]:
    """Every row of ``path`` as an Example; a file without rows is refused."""
    examples = [to_example(path, number, row, fmt) for number, row in read_rows(path, fmt)]
    if not examples:
        raise ValueError(f"{fmt.source}: {path} has no rows")
    return examples
