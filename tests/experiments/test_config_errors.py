"""Bad input is refused with a message that names the problem, before any model is loaded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from experiments.train import run
from grpo.config import register_configs
from grpo.credit import ConfigError

CONF = str(Path(__file__).resolve().parents[2] / "conf")
register_configs()


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=["tracking=off", *overrides])


def test_unknown_config_key_is_refused_by_name():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        cfg("algo.group_sise=8")
    assert "group_sise" in str(err.value) or "group_sise" in str(err.value.__cause__)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("algo.group_size=-4", "algo.group_size"),
        ("algo.group_size=1", "algo.group_size"),
        ("sampling.temperature=0", "sampling.temperature"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("algo.loss_aggregation=mean", "algo.loss_aggregation"),
        ("optim.lr=-1e-4", "optim.lr"),
        ("eval.pass_k=[1,16]", "eval.pass_k"),
        ("eval.temperature=0", "eval.temperature"),
        ("algo.adv_eps=-1", "algo.adv_eps"),
        ("algo.dynamic_sampling_max_rounds=-1", "algo.dynamic_sampling_max_rounds"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("model.device=gpu", "model.device"),
        ("model.device=cuda:99", "model.device"),  # no machine here has 100 GPUs
        ("model.lora.target_modules=[]", "model.lora.target_modules"),
        ("algo.overlong_buffer=-1", "algo.overlong_buffer"),
    ],
)
def test_out_of_range_values_are_refused(override, needle, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        run(cfg(override, f"run_dir={tmp_path}"))
    assert time.perf_counter() - start < 5  # refused before any model build (a base model takes minutes)
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize(
    "intervention",
    [
        {"name": "hapo", "start_step": 200},
        {
            "name": "compose",
            "steps": [{"name": "hapo", "start_step": 250}, {"name": "top_entropy", "start_step": 300}],
        },
        {"name": "compose", "start_step": 200, "steps": [{"name": "hapo"}]},
    ],
)
def test_intervention_window_after_the_last_step_is_refused(intervention, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"first acts at step 2\d\d \(start_step\), but train\.steps=200"):
        run(_with_intervention(intervention, tmp_path, "train.steps=200"))
    assert time.perf_counter() - start < 5


def test_compose_acts_from_its_earliest_step():
    import interventions  # noqa: F401  (registers every method)
    from grpo.credit import build_intervention

    steps = [{"name": "hapo", "start_step": 250}, {"name": "top_entropy", "start_step": 3}]
    assert build_intervention({"name": "compose", "steps": steps}).first_active_step() == 3
    assert build_intervention({"name": "compose", "start_step": 10, "steps": steps}).first_active_step() == 10


def test_missing_model_path_is_refused(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no such directory"):
        run(cfg("model=local", f"model.path={missing}", f"run_dir={tmp_path}"))


def test_unknown_intervention_and_task_are_refused(tmp_path):
    with pytest.raises(ConfigCompositionException):
        cfg("intervention=not_a_method")
    with pytest.raises(ConfigError, match="unknown intervention 'nope'"):
        run(_with_intervention({"name": "nope"}, tmp_path))


def _with_intervention(values: dict, tmp_path, *overrides: str):
    from omegaconf import OmegaConf, open_dict

    c = cfg(f"run_dir={tmp_path}", *overrides)
    with open_dict(c):
        c.intervention = OmegaConf.create(values)
    return c


def test_cli_refuses_typo_with_exit_code_and_message():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "tracking=off", "algo.grop_size=8"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(CONF).parent,
    )
    assert out.returncode != 0
    assert "grop_size" in out.stderr + out.stdout
