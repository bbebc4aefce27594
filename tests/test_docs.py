"""The README's and the documentation pages' commands name what exists: every console script (``quadrl-*``) is one
of pyproject's ``[project.scripts]``, and every config key a ``quadrl-*`` command sets (``a.b=value``) is a key of
the config tree (experiments/config_reference.py: the dataclasses and the method and task registries), every
group choice (``intervention=hapo``) a file of ``conf/<group>/``.

Commands are read from ```bash blocks and from inline code spans. Not checked, on purpose:
- ``+key=...`` and ``~key``: Hydra's append and delete, which add what the schema does not hold by design
  (``+eval=paper_math`` composes a preset group the run config has no default for); their group files are checked
  like any other group choice (``condition=quadrant/only_pos_low``: a file under a group's subfolder);
- ``hydra.*`` and ``hydra/...``: Hydra's own config (launcher, sweep dir), not quadrl's;
- the argparse scripts' ``--options``: ``--help`` is their reference, and the flags are not config keys;
- placeholders (``intervention=<name>``), and the group choices of a command that adds a config folder of its
  own (``--config-dir``, ``hydra.searchpath``): its groups live in that folder, which the page creates.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import tomllib
import yaml

from experiments.config_reference import all_keys
from experiments.renamed import renamed
from tests.conftest import REPO

SCRIPT = re.compile(r"(?:(?<=^)|(?<=[\s/]))(quadrl-[a-z]+)(?=\s|$)")
"""A console script as a command word: at the start, after a space or a bin/ path, and ending there (so
``/tmp/quadrl-walkthrough}`` or ``viewStateShareKey=quadrl-sweep-...`` are not commands)."""
KEY = re.compile(r"^(?P<prefix>[+~]*)(?P<key>[A-Za-z_][\w.]*)(?:=(?P<value>.*))?$")
"""An override token: ``key=value``, ``+key=value`` or ``~key``."""
SEPARATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1"}
"""Where a command's arguments end."""
CONF = REPO / "conf"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def commands(text: str) -> list[str]:
    """Each shell line of the ```bash blocks (backslash continuations joined) and each inline code span."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return found


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """(script, its arguments) for every ``quadrl-*`` on the line."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # a span quoting half a command (an unbalanced quote): split on blanks
        tokens = line.split()
    found = []
    for i, token in enumerate(tokens):
        match = SCRIPT.search(token)
        if match and token.endswith(match[1]):
            args = []
            for arg in tokens[i + 1 :]:
                if arg in SEPARATORS:
                    break
                args.append(arg)
            found.append((match[1], args))
    return found


@cache
def console_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


@cache
def config_keys(owner: str | None = None) -> dict[str, str]:
    """key -> its type as written; with ``owner`` (``intervention=hapo``) the keys of the run config and those of
    that method or task only."""
    keys = all_keys()
    if owner is not None:
        group = owner.split("=")[0] + "="
        keys = [k for k in keys if not k.owner.startswith(group) or k.owner == owner]
    return {k.key: k.type for k in keys}


@cache
def registered_name(group: str, choice: str) -> str | None:
    """The ``name`` a group file selects (``freeze_pos_high`` -> ``quadrant``, through its defaults list)."""
    path = CONF / group / f"{choice}.yaml"
    if not path.is_file():
        return None
    node = yaml.safe_load(path.read_text()) or {}
    if "name" in node:
        return node["name"]
    parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return registered_name(group, parents[0]) if parents else None


def key_problem(key: str, owner: str | None = None) -> str | None:
    """Why ``key`` is not a config key (of the method or task ``owner`` when the command picks one), or None when
    it is one (or lies under a free-form mapping)."""
    keys = config_keys(owner)
    if key in keys:
        return None
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        # a dict-typed field takes any sub-key (eval.paths.aime24); a list of configs is keyed by index
        prefix = ".".join(parts[:n])
        if keys.get(prefix, "").startswith(("dict", "Any")):
            return None
        if parts[n].isdigit() and f"{prefix}[]." + ".".join(parts[n + 1 :]) in keys:
            return None
    return f"{key!r} is not a config key" + (f" of {owner}" if owner else "")


def group_problem(group: str, value: str) -> str | None:
    """``group=value`` for a config group of conf/: every value of a sweep's list must be a file there."""
    for choice in value.split(","):
        if choice and choice != "null" and not (CONF / group / f"{choice}.yaml").is_file():
            return f"{group}={choice}: no conf/{group}/{choice}.yaml"
    return None


def problems(text: str) -> list[str]:
    found = []
    for line in commands(text):
        for script, args in invocations(line):
            if script not in console_scripts():
                found.append(
                    f"{script}: not a console script of pyproject.toml ({sorted(console_scripts())})"
                )
                continue
            own_conf = any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in args)
            # a method's or task's keys are checked against the one the command picks (a key of another method
            # would be refused at run time); without a choice, against all of them
            picked = {}
            for arg in args:
                group, _, choice = arg.partition("=")
                if group in ("intervention", "task") and "," not in choice and "<" not in choice:
                    name = registered_name(group, choice)
                    picked[group] = f"{group}={name}" if name else None
            for arg in args:
                if (
                    moved := renamed([arg])
                ) is not None:  # an old name: experiments/renamed.py says the new one
                    found.append(f"{script} ... {moved}")
                    continue
                match = KEY.match(arg)
                if (
                    arg.startswith("-")
                    or "<" in arg
                    or not match
                    or match["value"] is None
                    and not match["prefix"]
                ):
                    continue  # an argparse option, a placeholder, a positional value
                key, prefix = match["key"], match["prefix"]
                if key == "hydra" or key.startswith("hydra."):
                    continue
                if "." not in key and (CONF / key).is_dir():
                    problem = None if own_conf else group_problem(key, match["value"] or "")
                elif prefix:
                    continue
                else:
                    problem = key_problem(key, picked.get(key.split(".")[0]))
                if problem:
                    found.append(f"{script} ... {arg}: {problem}")
    return found


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_commands_name_scripts_and_keys_that_exist(path):
    assert problems(path.read_text()) == []


def test_the_check_reads_commands_and_catches_typos():
    """The reader finds the commands it must check, and a planted typo of each kind fails."""
    assert invocations(".venv/bin/quadrl-train seed=1 algo.beta=0.04 | tee log") == [
        ("quadrl-train", ["seed=1", "algo.beta=0.04"])
    ]
    assert invocations("WORK=${WORK:-/tmp/quadrl-walkthrough} && echo viewStateShareKey=quadrl-sweep-1") == []
    good = "```bash\n.venv/bin/quadrl-train intervention=hapo intervention.alpha=0.3 \\\n    optim.lr=1e-4\n```\n"
    assert problems(good) == []
    assert problems("run `quadrl-train model.lora.enabled=true eval.paths.aime24=/x +eval=paper_math`") == []
    assert problems("`quadrl-trian seed=1`") == [
        f"quadrl-trian: not a console script of pyproject.toml ({sorted(console_scripts())})"
    ]
    assert problems(good.replace("optim.lr", "optim.lrr")) == [
        "quadrl-train ... optim.lrr=1e-4: 'optim.lrr' is not a config key"
    ]
    assert problems("`quadrl-train intervention=none,hapoo`") == [
        "quadrl-train ... intervention=none,hapoo: intervention=hapoo: no conf/intervention/hapoo.yaml"
    ]
    assert problems("`quadrl-train condition=quadrant/freeze_pos_high intervention.scale.neg_low=0`") == []
    assert problems("`quadrl-train intervention=quadrant intervention.alpha=0.3`") == [
        "quadrl-train ... intervention.alpha=0.3: 'intervention.alpha' is not a config key of intervention=quadrant"
    ]
    assert problems("`quadrl-train --config-dir my/conf +eval=mine task=<task>`") == []
    assert problems("`quadrl-study condition=baseline,quadrant/nope`") == [
        "quadrl-study ... condition=baseline,quadrant/nope: condition=quadrant/nope: no conf/condition/quadrant/nope.yaml"
    ]
    assert problems("`quadrl-study +credit_method=arca`") == [
        "quadrl-study ... +credit_method=arca: conf/credit_method/ was renamed: every whole condition is an option "
        "of conf/condition/; write condition=arca"
    ]


def test_the_documented_commands_are_many():
    """A reader that silently found nothing would pass the test above: count what it checks."""
    lines = [line for path in doc_files() for line in commands(path.read_text())]
    calls = [call for line in lines for call in invocations(line)]
    scripts = {script for script, _ in calls}
    keys = [a for _, args in calls for a in args if KEY.match(a) and "=" in a]
    assert scripts >= {"quadrl-train", "quadrl-study", "quadrl-report", "quadrl-probe", "quadrl-eval"}, (
        scripts
    )
    assert len(calls) > 40 and len(keys) > 60, (len(calls), len(keys))


def test_the_readme_links_resolve():
    """The README is outside the site, so mkdocs' strict build does not check its links: every relative one must
    name a file of the repository (the pages it points into)."""
    links = re.findall(r"\]\(([^)\s]+)\)", (REPO / "README.md").read_text())
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) > 10 and [link for link in relative if not (REPO / link).is_file()] == []


def test_the_reference_pages_hold_every_key_and_script():
    """The site's reference pages are generated (scripts/docs_hooks.py): each config key, each console script."""
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "scripts" / "docs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    config = hooks.config_page()
    assert [k.key for k in all_keys() if f"| `{k.key}` |" not in config] == []
    assert "| `algo.beta` |" in config and "| `intervention.alpha` |" in config  # a core key, a method's key
    scripts = hooks.scripts_page()
    assert [s for s in console_scripts() if f"## `{s}`" not in scripts] == []
    metrics = hooks.metrics_page({"a.md": "logs `train/loss` and tags `quadrl.cpu`", "b.md": "`train/loss`"})
    assert (
        "| `train/loss` | [a](../a.md), [b](../b.md) |" in metrics
        and "| `quadrl.cpu` | [a](../a.md) |" in metrics
    )
