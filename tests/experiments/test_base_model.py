"""Base-model pre-training: smoke run, determinism, stopping rule, cache, MLflow logging, CLI."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import experiments.base_model as bm
from experiments.base_model import (
    BASE_MODEL_VERSION,
    PretrainError,
    SFTRecipe,
    TinyArchitecture,
    build_tiny_model,
    greedy_accuracy,
)
from experiments.tasks import make_task
from experiments.tasks.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

FAST = {"batch_size": 16, "warmup_steps": 5, "eval_every": 5, "dense_eval_every": 5, "tracking_uri": None}
"""Tiny batches and a short warm-up so a handful of steps show learning."""

RECIPE_FIELDS = {f.name for f in dataclasses.fields(SFTRecipe)}


def split(kwargs: dict) -> tuple[SFTRecipe, dict]:
    """(the recipe from the recipe fields among ``kwargs``, the other keyword arguments)."""
    recipe = SFTRecipe(**{k: v for k, v in kwargs.items() if k in RECIPE_FIELDS})
    return recipe, {k: v for k, v in kwargs.items() if k not in RECIPE_FIELDS}


def pretrain(task, params, out, **kwargs):
    recipe, rest = split(kwargs)
    return bm.pretrain(task, params, out, recipe, **rest)


def ensure_base_model(task, params, **kwargs):
    recipe, rest = split(kwargs)
    return bm.ensure_base_model(task, params, recipe, **rest)


def evaluate_accuracy(model, tokenizer, task):
    return greedy_accuracy(model, tokenizer, task, list(task.test()))


def test_build_tiny_model_config_and_seed():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        128,
        3,
        4,
        256,
    )
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 700_000
    same, other = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=1)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(w, same.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(w, other.model.layers[0].self_attn.q_proj.weight)


def test_pretrain_smoke_loss_falls_and_saved_model_loads(tmp_path):
    out = tmp_path / "base"
    meta = pretrain(
        "arith", {"n_test": 16}, out, seed=0, max_steps=30, max_seconds=120, allow_out_of_band=True, **FAST
    )
    assert meta["steps_trained"] == 30 and meta["in_band"] is False
    history = meta["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]
    assert history[-1]["loss"] < 0.75 * meta["first_loss"], history  # it learns
    saved = json.loads((out / "quadrl_base.json").read_text())
    assert saved["task"] == "arith" and saved["version"] == BASE_MODEL_VERSION and saved["seed"] == 0
    assert saved["test_accuracy"] == meta["test_accuracy"] and saved["steps"] == 30

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.encode("12+3=") == build_char_tokenizer().encode("12+3=")
    assert model.config.eos_token_id == tok.eos_token_id
    task = make_task("arith", n_test=16)
    assert evaluate_accuracy(model, tok, task) == pytest.approx(meta["test_accuracy"])


def test_same_seed_same_model(tmp_path):
    kwargs = dict(seed=5, max_steps=6, max_seconds=60, allow_out_of_band=True, **FAST)
    a = pretrain("countdown", {"n_test": 8}, tmp_path / "a", **kwargs)
    b = pretrain("countdown", {"n_test": 8}, tmp_path / "b", **kwargs)
    c = pretrain("countdown", {"n_test": 8}, tmp_path / "c", **{**kwargs, "seed": 6})
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(tmp_path / x) for x in "abc")
    pa, pb, pc = (dict(m.named_parameters()) for m in (ma, mb, mc))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert c["seed"] == 6


def _scripted(monkeypatch, accuracies):
    script = iter(accuracies)
    monkeypatch.setattr(bm, "greedy_accuracy", lambda *a, **k: next(script))


def _run(tmp_path, **kw):
    args = {**FAST, "batch_size": 2, "max_seconds": 120, "seed": 0, **kw}
    return pretrain("arith", {"n_test": 4}, tmp_path / "m", **args)


def test_stop_rule_stops_at_aim(tmp_path, monkeypatch):
    # evals every 5 steps until acc >= low/2 = 0.1, then every dense_eval_every = 1 step
    _scripted(monkeypatch, [0.0, 0.12, 0.25, 0.34, 0.36, 0.9])
    meta = _run(tmp_path, dense_eval_every=1)
    assert meta["in_band"] and meta["test_accuracy"] == 0.36
    assert [h["step"] for h in meta["history"]] == [5, 10, 11, 12, 13]


def test_stop_rule_falls_back_to_best_in_band_on_overshoot(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.0, 0.30, 0.25, 0.70])
    meta = _run(tmp_path)
    assert meta["in_band"] and meta["test_accuracy"] == 0.30 and meta["steps"] == 10
    assert meta["steps_trained"] == 20


def test_stop_rule_overshoot_without_fallback_fails(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.0, 0.05, 0.8])
    with pytest.raises(PretrainError, match="jumped"):
        _run(tmp_path)
    assert not (tmp_path / "m").exists()


def test_budget_exhausted_fails_or_keeps_in_band(tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.0, 0.01, 0.02])
    with pytest.raises(PretrainError, match="not in"):
        _run(tmp_path, max_steps=15)
    _scripted(monkeypatch, [0.0, 0.22, 0.21])
    meta = _run(tmp_path, max_steps=15)
    assert meta["in_band"] and meta["test_accuracy"] == 0.22 and meta["steps"] == 10


def test_pretrain_logs_to_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    _scripted(monkeypatch, [0.0, 0.4])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    meta = _run(tmp_path, tracking_uri=uri, seed=3)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("quadrl-base-models")
    assert experiment is not None
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name == "base-arith-seed3"
    assert run.data.tags["quadrl.base_model_version"] == BASE_MODEL_VERSION
    assert run.data.params["task"] == "arith" and run.data.params["task.n_test"] == "4"
    accuracy = client.get_metric_history(run.info.run_id, "pretrain/test_accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(5, 0.0), (10, 0.4)]
    assert len(client.get_metric_history(run.info.run_id, "pretrain/loss")) == 2


def test_ensure_base_model_caches_and_never_leaves_half_entries(tmp_path, monkeypatch):
    calls = []
    real = bm.pretrain

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(bm, "pretrain", counting)
    kw = dict(seed=0, cache_dir=tmp_path, max_steps=2, allow_out_of_band=True, **FAST)
    path = ensure_base_model("arith", {"n_test": 4}, **kw)
    assert path.parent == tmp_path / "base_models" and (path / "quadrl_base.json").is_file()
    assert (path / "config.json").is_file() and len(calls) == 1
    assert ensure_base_model("arith", {"n_test": 4}, **kw) == path and len(calls) == 1  # cached
    # explicit defaults key the same entry; a data-changing parameter or another seed does not
    assert bm.base_model_key("arith", {"n_test": 4, "min_digits": 3}) == bm.base_model_key(
        "arith", {"n_test": 4}
    )
    assert bm.base_model_key("arith", {"n_test": 4, "max_digits": 5}) != bm.base_model_key(
        "arith", {"n_test": 4}
    )
    assert bm.base_model_key("arith", {}, SFTRecipe(seed=1)) != bm.base_model_key(
        "arith", {}, SFTRecipe(seed=0)
    )
    assert bm.base_model_key("arith", {"seed": 9}) == bm.base_model_key("arith", {})  # pretrain seed rules
    small = SFTRecipe(architecture=TinyArchitecture(hidden_size=64))
    assert bm.base_model_key("arith", {}, small) != bm.base_model_key("arith", {})

    def crash(*args, **kwargs):
        (args[2] / "partial.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    monkeypatch.setattr(bm, "pretrain", crash)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_base_model("arith", {"n_test": 5}, **kw)
    entries = [p.name for p in (tmp_path / "base_models").iterdir() if not p.name.endswith(".lock")]
    assert entries == [path.name]


def test_cli(tmp_path, capsys):
    from experiments.pretrain import main

    out = tmp_path / "cli"
    code = main(
        ["--task", "arith", "--out", str(out), "--max-steps", "2", "--eval-every", "1", "--allow-out-of-band"]
        + ["--threads", "1"]
        + ["--tracking-uri", "none", "-q", "n_test=4", "max_digits=3"]
    )
    assert code == 0
    meta = json.loads((out / "quadrl_base.json").read_text())
    assert meta["task_params"] == {"n_test": 4, "max_digits": 3} and meta["steps_trained"] == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"] == str(out)
    assert main(["--task", "arith", "--out", str(tmp_path / "x"), "--tracking-uri", "none", "bogus=1"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("task", ["arith", "countdown"])
def test_pretrain_reaches_band(tmp_path, task):
    meta = pretrain(task, {}, tmp_path / task, seed=0, max_seconds=1500, tracking_uri=None)
    assert meta["in_band"] and 0.2 <= meta["test_accuracy"] <= 0.6
    model = AutoModelForCausalLM.from_pretrained(tmp_path / task)
    tok = AutoTokenizer.from_pretrained(tmp_path / task)
    assert evaluate_accuracy(model, tok, make_task(task)) == pytest.approx(meta["test_accuracy"])


OTHER_VALUES = {
    "seed": 1,
    "architecture": TinyArchitecture(hidden_size=64),
    "lr": 1e-3,
    "betas": (0.9, 0.99),
    "weight_decay": 0.0,
    "warmup_steps": 50,
    "batch_size": 32,
    "grad_clip": 0.5,
    "target_accuracy": (0.3, 0.7),
    "aim_tolerance": 0.1,
    "eval_every": 7,
    "dense_eval_every": 3,
    "max_steps": 100,
    "allow_out_of_band": True,
    "num_threads": 2,
}
"""A value other than the default for every recipe field: a new field without an entry here fails the test."""


def test_every_recipe_field_is_in_the_cache_key():
    assert set(OTHER_VALUES) == RECIPE_FIELDS
    default = bm.base_model_key("arith", {})
    for name, value in OTHER_VALUES.items():
        assert bm.base_model_key("arith", {}, SFTRecipe(**{name: value})) != default, name
    for f in dataclasses.fields(TinyArchitecture):
        other = {"num_heads": 2, "hidden_size": 64}.get(f.name, getattr(TinyArchitecture(), f.name) // 2)
        arch = TinyArchitecture(**{f.name: other})
        assert bm.base_model_key("arith", {}, SFTRecipe(architecture=arch)) != default, f.name
    # unset evaluation cadences are the task's hints, keyed by value: arith's hint is 20 / 5
    assert bm.base_model_key("arith", {}, SFTRecipe(eval_every=20, dense_eval_every=5)) == default


def test_pretrain_takes_nothing_that_changes_the_model_outside_the_recipe():
    """Everything else pretrain accepts is documented not to change the model; a new parameter must either go
    into SFTRecipe (and so into the key) or be added here deliberately."""
    parameters = inspect.signature(bm.pretrain).parameters
    assert list(parameters)[:4] == ["task_name", "task_params", "out_dir", "recipe"]
    assert set(list(parameters)[4:]) == {"max_seconds", "tracking_uri", "verbose"}
    assert set(inspect.signature(bm.ensure_base_model).parameters) == {
        "task_name",
        "task_params",
        "recipe",
        "cache_dir",
        "max_seconds",
        "tracking_uri",
        "verbose",
    }


# ------------------------------------------------------------------------------------------- shipped models

SHIPPED = sorted(p for p in bm.SHIPPED_DIR.iterdir() if (p / bm.METADATA_FILE).is_file())


@pytest.mark.parametrize("model_dir", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_match_their_checksums_and_keys(model_dir):
    meta = bm.load_metadata(model_dir)
    assert bm.verify_shipped(model_dir) == meta["sha256"]["model.safetensors"]
    assert set(meta["sha256"]) >= {"model.safetensors", "tokenizer.json", "config.json"}
    assert meta["in_band"] and meta["key"].startswith(f"{meta['task']}-seed0-")


def test_arith_and_countdown_ship_a_base_model():
    assert {"arith", "countdown"} <= {p.name for p in SHIPPED}


def test_a_changed_or_missing_shipped_file_is_refused_by_name(tmp_path, monkeypatch):
    import shutil

    original, copy = bm.SHIPPED_DIR / "arith", tmp_path / "models" / "arith"
    shutil.copytree(original, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(bm.ShippedModelError, match=r"model\.safetensors: sha256 .* does not match"):
        bm.verify_shipped(copy)
    # a run never silently rebuilds over a corrupted shipped model
    monkeypatch.setattr(bm, "SHIPPED_DIR", tmp_path / "models")
    monkeypatch.setattr(
        bm, "ensure_base_model", lambda *a, **k: pytest.fail("rebuilt a corrupted shipped model")
    )
    with pytest.raises(bm.ShippedModelError, match=str(weights)):
        bm.resolve_base_model("arith", {}, tracking_uri=None)
    shutil.copy(original / "model.safetensors", weights)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(bm.ShippedModelError, match=r"tokenizer\.json: missing"):
        bm.resolve_base_model("arith", {}, tracking_uri=None)


def test_the_built_in_teacher_ships_and_is_used_without_a_build(monkeypatch):
    """models/arith_teacher is what algo=opd distils from: verified and used as is; a teacher of another accuracy
    is built (and the run says why)."""
    monkeypatch.setattr(bm, "ensure_base_model", lambda *a, **k: pytest.fail("built the shipped teacher"))
    said: list[str] = []
    name = bm.teacher_name("arith")
    got = bm.resolve_base_model(
        "arith", {}, bm.teacher_recipe(0, 0.9), name=name, tracking_uri=None, say=said.append
    )
    meta = bm.load_metadata(got.path)
    assert got.path == bm.SHIPPED_DIR / "arith_teacher" and said == []
    assert got.tag == f"shipped:{meta['sha256']['model.safetensors'][:16]}"
    assert meta["test_accuracy"] >= 0.9 and meta["recipe"]["target_accuracy"] == [0.9, 1.0]

    monkeypatch.setattr(
        bm,
        "ensure_base_model",
        lambda task, params, recipe, **k: bm.SHIPPED_DIR / bm.base_model_key(task, params, recipe),
    )
    other = bm.resolve_base_model(
        "arith", {}, bm.teacher_recipe(0, 0.95), name=name, tracking_uri=None, say=said.append
    )
    assert (
        other.tag.startswith("built:arith-seed0-")
        and "target_accuracy=[0.95, 1.0] (shipped: [0.9, 1.0])" in said[0]
    )


def test_ship_seals_the_cached_build_with_its_key_and_checksums(tmp_path, monkeypatch):
    import shutil

    cached = tmp_path / "cache" / "arith-build"
    shutil.copytree(bm.SHIPPED_DIR / "arith", cached)
    meta = bm.load_metadata(cached)
    for field in ("key", "sha256"):  # what a cache entry does not have
        meta.pop(field)
    (cached / bm.METADATA_FILE).write_text(json.dumps(meta))
    monkeypatch.setattr(bm, "ensure_base_model", lambda *a, **k: cached)
    monkeypatch.setattr(bm, "SHIPPED_DIR", tmp_path / "models")
    dest = bm.ship("arith", {}, bm.teacher_recipe(0, 0.9), name="arith_teacher")
    assert dest == tmp_path / "models" / "arith_teacher"
    sealed = bm.load_metadata(dest)
    assert sealed["key"] == bm.base_model_key("arith", {}, bm.teacher_recipe(0, 0.9))
    assert sealed["sha256"]["model.safetensors"] == bm.file_sha256(cached / "model.safetensors")
    assert bm.verify_shipped(dest) == sealed["sha256"]["model.safetensors"]
    assert not list((tmp_path / "models").glob(".tmp-*"))  # nothing half-written left behind


def test_pretrain_refuses_a_shipped_name_without_ship(capsys):
    from experiments.pretrain import main

    assert (
        main(["--task", "arith", "--out", "somewhere", "--name", "arith_teacher"]) == 2
    )  # a refused value: exit 2, as every entry point
    assert "--name names a shipped model: it needs --ship" in capsys.readouterr().err


def test_the_shipped_model_is_used_only_for_what_it_was_built_from(monkeypatch):
    built = []

    def build(task, params, recipe, **kwargs):
        built.append((task, dict(params), recipe))
        return bm.SHIPPED_DIR.parent / "cache" / bm.base_model_key(task, params, recipe)

    monkeypatch.setattr(bm, "ensure_base_model", build)
    said: list[str] = []
    shipped = bm.resolve_base_model("arith", {"n_test": 200}, tracking_uri=None, say=said.append)
    sha = bm.load_metadata(bm.SHIPPED_DIR / "arith")["sha256"]["model.safetensors"]
    assert shipped.path == bm.SHIPPED_DIR / "arith" and shipped.tag == f"shipped:{sha[:16]}"
    assert built == [] and said == []

    other = bm.resolve_base_model("arith", {"max_digits": 6}, tracking_uri=None, say=said.append)
    assert built[-1][:2] == ("arith", {"max_digits": 6}) and other.tag.startswith("built:arith-seed0-")
    assert len(said) == 1 and "max_digits=6 (shipped: 4)" in said[0] and "building" in said[0]

    bm.resolve_base_model("arith", {}, SFTRecipe(seed=3), tracking_uri=None, say=said.append)
    assert built[-1][2].seed == 3 and "seed=3 (shipped: 0)" in said[-1]

    said.clear()
    forced = bm.resolve_base_model("arith", {}, base="build", tracking_uri=None, say=said.append)
    assert forced.tag.startswith("built:") and len(built) == 3 and said == []
