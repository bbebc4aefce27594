"""The mechanism study preset (conf/experiment/quadrant_mechanisms.yaml) and its paired conditions
(conf/condition/): every condition composes into the config it claims to be, and the report's pairs name them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import interventions  # noqa: F401  (registers every method)
from experiments.study import study_config, study_report
from grpo.config import validate
from grpo.credit import build_intervention
from tests.conftest import compose_config


def sweep_options() -> list[str]:
    cfg = study_config("quadrant_mechanisms", [])
    return str(cfg.hydra.sweeper.params["condition"]).split(",")


OPTIONS = sweep_options()


def condition(option: str) -> tuple[dict, dict]:
    cfg = compose_config("experiment=quadrant_mechanisms", f"condition={option}")
    validate(OmegaConf.to_object(cfg))
    intervention = OmegaConf.to_container(cfg.intervention, resolve=True)
    build_intervention(intervention)
    return intervention, OmegaConf.to_container(cfg.optim, resolve=True)


def preset(name: str) -> dict:
    """The intervention of condition ``name`` alone (``baseline``: plain GRPO)."""
    return OmegaConf.to_container(compose_config(f"condition={name}").intervention, resolve=True)


def test_grid_is_masks_times_fixes_plus_the_baselines():
    masks = ("only_pos_low", "only_neg_low", "only_neg_high")
    expected = {"baseline", "sgd"} | {
        f"quadrant/{m}{fix}" for m in masks for fix in ("", "_min_replace", "_sgd")
    }
    assert set(OPTIONS) == expected and len(OPTIONS) == 11
    seeds = str(study_config("quadrant_mechanisms", []).hydra.sweeper.params.seed).split(",")
    assert len(seeds) >= 5


@pytest.mark.parametrize("option", OPTIONS)
def test_each_condition_is_what_its_name_says(option):
    intervention, optim = condition(option)
    mask = option.removesuffix("_min_replace").removesuffix("_sgd")
    if option.endswith("_min_replace"):
        assert intervention["name"] == "compose" and intervention["steps"][-1] == {"name": "min_replace"}
        mask_step = build_intervention(intervention["steps"][0]).config
        assert mask_step == build_intervention(preset(mask)).config
    else:
        expected = "baseline" if mask in ("baseline", "sgd") else mask
        assert build_intervention(intervention).config == build_intervention(preset(expected)).config
    if option == "sgd" or option.endswith("_sgd"):
        # conf/condition/sgd.yaml's plain SGD, written out here rather than read from condition("sgd") itself
        assert {k: optim[k] for k in ("name", "lr", "momentum")} == {
            "name": "sgd",
            "lr": 0.03,
            "momentum": 0.0,
        }
    else:
        assert optim["name"] == "adamw" and optim["lr"] == 1e-4


def test_report_pairs_name_conditions_of_the_grid():
    settings = study_report("quadrant_mechanisms")
    names = {f"condition={o}" for o in OPTIONS}
    assert settings.control in names
    assert len(settings.pairs) == 7 and all(c in names and r in names for c, r in settings.pairs)


def test_study_takes_sweeps_on_the_command_line():
    """``quadrl-study --preset quadrant_mechanisms condition=a,b seed=0``: the study's own config (tracking, base
    model) is that of the first job; compose alone would refuse the sweep."""
    cfg = study_config(
        "quadrant_mechanisms", ["condition=quadrant/only_neg_low,baseline", "seed=0", "train.steps=10"]
    )
    assert cfg.train.steps == 10 and cfg.seed == 0 and cfg.intervention.name == "quadrant"
