"""Configs: bad values refused with ConfigError naming the field (through build_intervention, before any
model loads); every preset in conf/intervention composes through Hydra, builds and repeats the code's defaults;
every config field documented."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import interventions  # noqa: F401  (registers every method)
from grpo.checks import ConfigError
from grpo.credit import build_intervention, registered
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "intervention"


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"name": "quadrant", "scale": {"pos_hi": 0}}, r"scale: unknown key\(s\) \['pos_hi'\]"),
        ({"name": "quadrant", "scale": {"neg_low": -1.0}}, r"scale\.neg_low must be in \[0, inf\)"),
        ({"name": "quadrant", "scale": {"neg_low": "zero"}}, r"scale\.neg_low must be a number"),
        ({"name": "quadrant", "scale": [1, 0, 0, 0]}, r"scale must be a mapping"),
        ({"name": "quadrant", "split": {"mode": "median"}}, r"split\.mode must be one of"),
        ({"name": "quadrant", "split": {"high_fraction": 1.0}}, r"split\.high_fraction must be in \(0, 1\)"),
        ({"name": "quadrant", "split": {"mode": "absolute"}}, r"split\.threshold is required"),
        ({"name": "quadrant", "split": {"quantile": 0.2}}, r"split: unknown key\(s\) \['quantile'\]"),
        ({"name": "quadrant", "renormalize": "yes"}, r"renormalize must be true or false"),
        ({"name": "top_entropy", "rho": 0.0}, r"rho must be in \(0, 1\]"),
        ({"name": "top_entropy", "rho": 1.5}, r"rho must be in \(0, 1\]"),
        ({"name": "top_entropy", "rho": -0.2}, r"rho must be in \(0, 1\]"),
        ({"name": "hapo", "start_step": 5, "end_step": 5}, r"empty step window"),
        ({"name": "hapo", "start_step": 5, "end_step": 3}, r"empty step window"),
        ({"name": "hapo", "start_step": -1}, r"start_step must be >= 0"),
        ({"name": "hapo", "start_step": "5"}, r"start_step must be an integer, got '5'"),
        ({"name": "hapo", "end_step": 2.5}, r"end_step must be an integer or null, got 2\.5"),
        ({"name": "quadrant", "start_step": True}, r"start_step must be an integer"),
        ({"name": "hapo", "alpha": 2.0, "phi": 2.0}, r"alpha must be < phi"),
        ({"name": "hapo", "phi": 0.0}, r"phi must be in \(0, inf\)"),
        ({"name": "hapo", "scope": "token"}, r"scope must be one of \['batch', 'group', 'sequence'\]"),
        ({"name": "hapo", "alpah": 0.3}, r"unknown key\(s\) \['alpah'\]"),
        ({"name": "entropy_adv", "kappa": 0.0}, r"kappa must be in \(0, inf\)"),
        ({"name": "entropy_adv", "alpha": float("nan")}, r"alpha must be finite"),
        ({"name": "clip_cov", "lb": 5.0, "ub": 1.0}, r"ub must be > lb"),
        ({"name": "clip_cov", "ratio": 0.0}, r"ratio must be in \(0, 1\]"),
        ({"name": "kl_cov", "beta": -1.0}, r"beta must be in \[0, inf\)"),
        ({"name": "w_reinforce", "lam": -0.1}, r"lam must be in \[0, inf\)"),
        ({"name": "gtpo", "alpha1": 0.0}, r"alpha1 must be in \(0, inf\)"),
        (
            {"name": "gtpo", "normalisation": "zscore"},
            r"normalisation must be one of \['sign_preserving', 'paper'\]",
        ),
        ({"name": "gtpo", "scope": "sequence"}, r"scope must be one of \['group', 'batch'\]"),
        ({"name": "grpo_magic"}, r"unknown intervention 'grpo_magic'; registered: \["),
        ({"name": "compose", "steps": []}, r"steps is empty"),
        ({"name": "compose", "steps": [{"name": "hapo", "rho": 0.2}]}, r"intervention 'hapo': unknown key"),
        (
            {"name": "compose", "steps": [{"name": "compose", "steps": [{"name": "none"}]}]},
            r"another compose",
        ),
        ({"name": "compose", "steps": "hapo"}, r"steps must be a list of intervention configs"),
        ({"name": "compose", "steps": {"name": "hapo"}}, r"steps must be a list of intervention configs"),
        ({"name": "compose", "steps": ["hapo"]}, r"steps\[0\] must be a mapping with a 'name' key"),
        # without the check a step with no name silently became 'none'
        (
            {"name": "compose", "steps": [{"name": "hapo"}, {"start_step": 3}]},
            r"steps\[1\] must be a mapping",
        ),
        (
            {"name": "compose", "steps": [{"name": "quadrant", "scale": {"neg_lo": 0}}]},
            r"intervention 'quadrant'\.scale: unknown key\(s\) \['neg_lo'\]",
        ),
        ({"name": "compose", "steps": [{"name": "hapo", "end_step": 0}]}, r"'hapo': empty step window"),
    ],
)
def test_bad_configs_are_refused_by_name(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_intervention(values)


def test_the_error_message_names_the_method():
    with pytest.raises(ConfigError, match=r"^intervention 'quadrant'"):
        build_intervention({"name": "quadrant", "scale": {"pos_high": -2}})


def test_good_edge_values_are_accepted():
    build_intervention({"name": "top_entropy", "rho": 1.0})
    build_intervention({"name": "hapo", "alpha": 0.0, "start_step": 3, "end_step": 4})
    build_intervention(
        {
            "name": "quadrant",
            "scale": {"pos_high": 0, "pos_low": 5},
            "split": {"mode": "absolute", "threshold": 0.1},
        }
    )


def yaml_files() -> list[Path]:
    return sorted(CONF.glob("*.yaml"))


def composed(preset: str) -> dict:
    """conf/intervention/<preset>.yaml as Hydra composes it for ``intervention=<preset>`` (defaults list applied)."""
    return OmegaConf.to_container(compose_config(f"intervention={preset}").intervention, resolve=True)


def test_every_method_has_a_yaml_named_after_it():
    names = {p.stem for p in yaml_files()}
    assert set(registered()) <= names


def test_conf_intervention_holds_methods_only():
    """A preset of a method (a quadrant mask, ...) is a condition (conf/condition/), not a method."""
    assert {p.stem for p in yaml_files()} <= set(registered())


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.name)
def test_every_yaml_builds(path):
    values = composed(path.stem)
    method = build_intervention(values)
    assert type(method).name == values["name"]


@pytest.mark.parametrize(
    "path", [p for p in yaml_files() if p.stem in registered() and p.stem != "compose"], ids=lambda p: p.name
)
def test_method_yaml_repeats_the_code_defaults(path):
    """conf/intervention/<method>.yaml and the config dataclass must agree on the paper's defaults."""
    config = build_intervention(composed(path.stem)).config
    defaults = type(config)()
    assert dataclasses.asdict(config) == dataclasses.asdict(defaults)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("only_pos_high", {"pos_high": 1.0, "pos_low": 0.0, "neg_high": 0.0, "neg_low": 0.0}),
        ("only_pos_low", {"pos_high": 0.0, "pos_low": 1.0, "neg_high": 0.0, "neg_low": 0.0}),
        ("only_neg_high", {"pos_high": 0.0, "pos_low": 0.0, "neg_high": 1.0, "neg_low": 0.0}),
        ("only_neg_low", {"pos_high": 0.0, "pos_low": 0.0, "neg_high": 0.0, "neg_low": 1.0}),
        ("freeze_pos_high", {"pos_high": 0.0, "pos_low": 1.0, "neg_high": 1.0, "neg_low": 1.0}),
        ("freeze_pos_low", {"pos_high": 1.0, "pos_low": 0.0, "neg_high": 1.0, "neg_low": 1.0}),
        ("freeze_neg_high", {"pos_high": 1.0, "pos_low": 1.0, "neg_high": 0.0, "neg_low": 1.0}),
        ("freeze_neg_low", {"pos_high": 1.0, "pos_low": 1.0, "neg_high": 1.0, "neg_low": 0.0}),
    ],
)
def test_quadrant_presets(preset, expected):
    values = OmegaConf.to_container(compose_config(f"condition=quadrant/{preset}").intervention, resolve=True)
    config = build_intervention(values).config
    assert config.name == "quadrant"
    assert config.scale.as_dict() == expected
    assert not config.renormalize and not config.mask_kl


def _dataclass_fields_without_docstring(path: Path, classes: set[str] | None = None) -> list[str]:
    tree = ast.parse(path.read_text())
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef) or (classes is not None and node.name not in classes):
            continue
        if not any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                nxt = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(nxt, ast.Expr) and isinstance(
                    getattr(nxt, "value", None), ast.Constant
                )
                if not documented and "ClassVar" not in ast.unparse(stmt.annotation):
                    missing.append(f"{path.name}:{node.name}.{stmt.target.id}")
    return missing


def test_every_config_field_has_a_docstring():
    files = [
        *(ROOT / "interventions").glob("*.py"),
        *(ROOT / "grpo" / n for n in ("config.py", "credit.py", "quadrants.py")),
    ]
    missing = [m for p in files for m in _dataclass_fields_without_docstring(p)]
    recipe = ROOT / "experiments" / "base_model.py"
    missing += _dataclass_fields_without_docstring(recipe, {"SFTRecipe", "TinyArchitecture"})
    assert missing == []


def test_every_method_module_cites_its_arxiv_id():
    for name, cls in registered().items():
        if name in {"none", "compose"}:
            continue
        doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
        assert re.search(r"arXiv \d{4}\.\d{5}", doc.splitlines()[0]), name
