"""Every config key a run accepts, with its type, default and docstring, read from the dataclasses themselves.

One walk serves two readers: the documentation site's generated reference page (``scripts/docs_hooks.py``) and the
test that every key a documented command sets exists (``tests/test_docs.py``). Reading the dataclasses, not a
hand-kept list, is the point: a field added to a config appears in the reference at the next build.

Keys: the fields of :class:`grpo.config.QuadrlConfig`, nested dataclasses as ``a.b`` (with the ``probe.*`` keys
only ``quadrl-probe`` reads, from ``experiments.probe.ProbeAppConfig``); the untyped nodes are
expanded from their registries: ``intervention.<field>`` from every registered method's config class (the method
named in the entry), ``task.<param>`` from every registered task's signature, ``report.<field>`` from the study
app's :class:`experiments.study.StudyReport`. A list of dataclasses
(``eval.suite``) is documented by its element's fields as ``eval.suite[].<field>``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    key: str
    """Dotted path as a Hydra override spells it (``algo.beta``)."""
    type: str
    """The annotation as written in the source."""
    default: str
    """repr of the default; ``(required)`` where there is none."""
    doc: str
    """The field's docstring (the string literal under it)."""
    owner: str
    """Where it comes from: the dataclass, or the registered method/task that accepts it."""


def _field_sources(cls: type) -> dict[str, tuple[str, str]]:
    """name -> (annotation source, docstring) over ``cls``'s MRO, the subclass's own text winning."""
    found: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                nxt = body[i + 1] if i + 1 < len(body) else None
                doc = (
                    inspect.cleandoc(nxt.value.value)
                    if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    else ""
                )
                found[stmt.target.id] = (ast.unparse(stmt.annotation), doc)
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _dataclass_in(annotation: Any) -> tuple[type | None, bool]:
    """The dataclass an annotation names, and whether it is a list of them."""
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation) or (None,)
        if dataclasses.is_dataclass(inner):
            return inner, True
    return None, False


def dataclass_keys(cls: type, prefix: str = "") -> list[Key]:
    """The keys of ``cls`` and of the dataclasses nested in it, depth first, in field order."""
    hints = typing.get_type_hints(cls)
    sources = _field_sources(cls)
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        annotation, doc = sources.get(f.name, (str(hints.get(f.name, "")), ""))
        nested, is_list = _dataclass_in(hints.get(f.name))
        default = _default(f)
        shown = "(required)" if default is dataclasses.MISSING else repr(default)
        if nested is not None and not is_list:
            keys.append(Key(key, annotation, "", doc, cls.__name__))
            keys += dataclass_keys(nested, key + ".")
        else:
            keys.append(Key(key, annotation, shown, doc, cls.__name__))
            if nested is not None:
                keys += dataclass_keys(nested, key + "[].")
    return keys


def intervention_keys() -> list[Key]:
    """``intervention.<field>`` for every registered method, its config's fields (the shared ones included)."""
    import interventions  # noqa: F401  (registers every method)
    from grpo.credit import registered

    keys: list[Key] = []
    for name, method in sorted(registered().items()):
        for k in dataclass_keys(method.config_class, "intervention."):
            keys.append(dataclasses.replace(k, owner=f"intervention={name}"))
    return keys


def task_keys() -> list[Key]:
    """``task.<param>`` for every registered task: the parameters of its factory (``task.name`` picks the task)."""
    from experiments.tasks import TASKS, task_params

    keys = [
        Key("task.name", "str", "'arith'", "The registered task: " + ", ".join(sorted(TASKS)) + ".", "task")
    ]
    for name in sorted(TASKS):
        for param, default in task_params(name).items():
            shown = "(required)" if default is inspect.Parameter.empty else repr(default)
            keys.append(Key(f"task.{param}", "", shown, "", f"task={name}"))
    return keys


def probe_app_keys() -> list[Key]:
    """``probe.<field>`` keys only ``quadrl-probe`` reads (its report, checkpoint and scoreboard settings:
    ``experiments.probe.ProbeAppConfig``); ``quadrl-train`` refuses them."""
    from experiments.probe import ProbeAppConfig
    from grpo.config import ProbeConfig

    core = {f.name for f in dataclasses.fields(ProbeConfig)}
    return [
        dataclasses.replace(k, owner="quadrl-probe", doc=f"quadrl-probe only: {k.doc}")
        for k in dataclass_keys(ProbeAppConfig, "probe.")
        if k.key.removeprefix("probe.") not in core
    ]


def report_keys() -> list[Key]:
    """``report.<field>``: a preset's report settings, read by ``quadrl-study`` (experiments/study.py)."""
    from experiments.study import StudyReport

    return [
        dataclasses.replace(k, owner="report (quadrl-study)") for k in dataclass_keys(StudyReport, "report.")
    ]


def all_keys() -> list[Key]:
    """Every key of the run config: the dataclass tree, quadrl-probe's own ``probe.*`` keys, then the methods',
    the tasks' and the report's keys."""
    from grpo.config import QuadrlConfig

    tree = [k for k in dataclass_keys(QuadrlConfig) if k.key not in ("task", "intervention")]
    probe_end = max(i for i, k in enumerate(tree) if k.key.startswith("probe.")) + 1
    tree = tree[:probe_end] + probe_app_keys() + tree[probe_end:]
    return tree + intervention_keys() + task_keys() + report_keys()


def key_names() -> set[str]:
    """The dotted keys an override may set (a list element's fields as ``a.b[].c``)."""
    return {k.key for k in all_keys()}
