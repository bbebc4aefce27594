"""mkdocs hook: the reference pages, generated at every build from the code they describe.

- ``reference/config.md``: every config key (experiments/config_reference.py walks the dataclasses and the method
  and task registries), so a new field is in the reference at the next build without anyone writing it down;
- ``reference/scripts.md``: every console script of pyproject's ``[project.scripts]``, with its module's docstring;
- ``reference/metrics.md``: every metric and run tag the other pages document, with links to where.

mkdocs.yml names this file under ``hooks:``; the pages exist only in the built site (nothing to keep in sync).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections import defaultdict
from pathlib import Path

from mkdocs.structure.files import File, Files

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

METRIC = re.compile(r"`((?:train|eval|perf|cancel|probe|sweep|quadrant|intervention)/[^`\s]+)`")
"""A metric name as the pages write it: a logged prefix, a slash, in backticks (``intervention=x`` has no slash)."""
TAG = re.compile(r"`((?:quadrl\.[a-z_.]+|override\.<key>|sweep\.condition|mlflow\.parentRunId))`")
"""A run tag as the pages write it."""


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: script name -> ``module:function``."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _cell(text: str) -> str:
    """A docstring as one Markdown table cell: rst ``code`` as Markdown, no newlines, no pipe that would split
    the cell (Python-Markdown's tables leave a pipe inside a code span alone and render a backslash-escaped one
    with its backslash, so a pipe outside code becomes its HTML entity)."""
    text = re.sub(r"\s+", " ", text.replace("``", "`")).strip()
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("|", "&#124;") for i, p in enumerate(parts))


def _code(text: str) -> str:
    """A value as one table cell in code: its pipes stay as they are (see :func:`_cell`)."""
    return "`" + re.sub(r"\s+", " ", text).strip() + "`"


def _row(k) -> str:
    # a nested config (``model.lora``) has no default of its own: its keys follow it
    default = _code(k.default) if k.default else "(group)"
    return f"| `{k.key}` | {_code(k.type)} | {default} | {_cell(k.doc)} |"


def config_page() -> str:
    from experiments.config_reference import all_keys
    from experiments.tasks import TASKS

    lines = [
        "# Config reference",
        "",
        "Generated at every build from the config dataclasses (`grpo/config.py`, each method's config in",
        "`interventions/`) and the task registry: each key as a Hydra override spells it (`quadrl-train algo.beta=0.04`),",
        "its type, default and docstring. A list of configs (`eval.suite`) is shown by its element's fields (`[]`).",
        "",
    ]
    keys = all_keys()
    core = [k for k in keys if not k.owner.startswith(("intervention=", "task="))]
    lines += ["## The run config", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [_row(k) for k in core]
    lines += ["", "## Interventions (`intervention=<name>`)", ""]
    lines += [
        "Every registered method's keys (`intervention.name`, `start_step` and `end_step` are common to all);",
        "the method's module in `interventions/` holds its formula and source.",
        "",
    ]
    by_owner: dict[str, list] = defaultdict(list)
    for k in keys:
        by_owner[k.owner].append(k)
    for owner in sorted(o for o in by_owner if o.startswith("intervention=")):
        lines += [f"### `{owner}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [_row(k) for k in by_owner[owner]]
        lines.append("")
    lines += ["## Tasks (`task=<name>`)", "", "Each task's keys are its factory's parameters.", ""]
    for owner in sorted(o for o in by_owner if o.startswith("task=")):
        doc = inspect.getdoc(TASKS[owner.removeprefix("task=")]) or ""
        lines += [f"### `{owner}`", "", _cell(doc.split("\n\n")[0]), "", "| key | default |", "|---|---|"]
        lines += [f"| `{k.key}` | {_code(k.default)} |" for k in by_owner[owner]]
        lines.append("")
    return "\n".join(lines) + "\n"


def scripts_page() -> str:
    lines = [
        "# Console scripts",
        "",
        "Generated from `[project.scripts]` in pyproject.toml: every command `scripts/setup.sh` installs into",
        "`.venv/bin/`, with its module's documentation. The Hydra apps take the overrides of the",
        "[config reference](config.md); the others print their options with `--help`.",
        "",
    ]
    for name, target in console_scripts().items():
        module = target.split(":")[0]
        doc = inspect.cleandoc(importlib.import_module(module).__doc__ or "").replace("``", "`")
        lines += [f"## `{name}`", "", f"`{target}`", "", "```text", doc, "```", ""]
    return "\n".join(lines) + "\n"


def metrics_page(pages: dict[str, str]) -> str:
    """``pages``: path under docs/ -> Markdown. Lists each metric and tag with the pages that document it."""
    found: dict[str, dict[str, set[str]]] = {"metric": defaultdict(set), "tag": defaultdict(set)}
    for path, text in pages.items():
        for kind, pattern in (("metric", METRIC), ("tag", TAG)):
            for name in pattern.findall(text):
                found[kind][name].add(path)
    lines = [
        "# Metrics and tags",
        "",
        "Generated from the other pages: every metric name (`train/`, `eval/`, `perf/`, `quadrant/`, `cancel/`,",
        "`probe/`, `sweep/`, `intervention/`) and run tag (`quadrl.*`, ...) they document, with where they explain it.",
        "",
    ]
    for kind, title in (("metric", "Metrics"), ("tag", "Tags")):
        lines += [f"## {title}", "", f"| {kind} | documented in |", "|---|---|"]
        for name in sorted(found[kind]):
            where = ", ".join(f"[{p.removesuffix('.md')}](../{p})" for p in sorted(found[kind][name]))
            lines.append(f"| {_code(name)} | {where} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    pages = {
        f.src_uri: Path(f.abs_src_path).read_text()
        for f in files.documentation_pages()
        if f.abs_src_path and not f.src_uri.startswith("reference/")
    }
    for uri, content in (
        ("reference/config.md", config_page()),
        ("reference/scripts.md", scripts_page()),
        ("reference/metrics.md", metrics_page(pages)),
    ):
        files.append(File.generated(config, uri, content=content))
    return files
