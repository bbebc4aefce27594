"""The sweep as a newcomer sees it in MLflow's UI.

Fast tests: which keys a sweep varies, each job's condition label, the shared view and its URL. The browser test
(slow): a finished small sweep (2 conditions x 2 seeds) with its report, served by ``mlflow ui`` on 127.0.0.1,
opened in a real browser (Playwright driving Debian's chromium, no browser download): the printed link opens the
runs page with the conditions' ``eval/accuracy`` side by side, the child runs under their conditions; the
"Model training" switch makes the experiment open on its runs; the report artifact is on the parent run. It saves
the screenshots the README's walkthrough uses: ``QUADRL_UI_SCREENSHOTS=docs/mlflow-ui`` writes them there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from experiments.sweep import (
    comparison_view,
    share_key,
    sweep_condition,
    swept_keys,
    ui_lines,
    ui_url,
)
from runrecord import SHARED_VIEW_TAG_PREFIX, SWEEP_CONDITION_TAG
from tests.experiments.test_grid_launchers import free_port, output_of, run_cli, train_cli

CHROMIUM = shutil.which("chromium")
UI_LINE = "MLflow UI, the conditions' eval/accuracy side by side: "


def sweep_config(grid: dict, overrides: list[str]):
    return OmegaConf.create({"hydra": {"sweeper": {"params": grid}, "overrides": {"task": overrides}}})


def test_swept_keys_are_those_with_several_values():
    preset = {"intervention": "none,hapo", "seed": "0,1"}
    assert swept_keys(sweep_config(preset, ["train.steps=3"])) == ["intervention", "seed"]
    assert swept_keys(sweep_config(preset, ["seed=0"])) == ["intervention"]  # the command line fixes it
    assert swept_keys(sweep_config({}, ["optim.lr=1e-4,3e-4", "+x=1", "seed=range(3)"])) == [
        "optim.lr",
        "seed",
    ]


def test_sweep_condition_labels_a_job_without_its_seed():
    swept = ["intervention", "optim.lr", "seed"]
    job = ["seed=2", "train.steps=3", "optim.lr=0.001", "intervention=hapo"]
    assert sweep_condition(job, swept) == "intervention=hapo optim.lr=0.001"
    assert sweep_condition(["seed=1"], ["seed"]) == "default"


def test_ui_url_points_at_the_shared_view():
    url = ui_url("sqlite:///mlflow.db", "7", "abc")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=quadrl-sweep-abc"
        "&compareRunsMode=CHART&workflowType=machine_learning"
    )
    assert ui_url("http://10.0.0.5:5001/", "7", "abc").startswith(
        "http://10.0.0.5:5001/#/experiments/7/runs?"
    )
    assert ui_url("databricks", "7", "abc") is None and ui_lines("databricks", "7", "abc") == []
    view = comparison_view("abc")
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc'"
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": SWEEP_CONDITION_TAG}]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, sft_model_dir, math_jsonl):
    """intervention=none,hapo x seed=0,1 on the SFT-ed tiny model (math_file sums), 6 steps, then the report."""
    tmp = tmp_path_factory.mktemp("ui_sweep")
    cmd = train_cli(
        "-m",
        "intervention=none,hapo",
        "seed=0,1",
        "model=local",
        f"model.path={sft_model_dir}",
        "task=math_file",
        f"task.path={math_jsonl}",
        "task.prompt_template='{prompt}'",
        "task.solution_field=solution",
        "task.test_fraction=0.2",
        "train.steps=6",
        "eval.every=2",
        "eval.n_samples=0",
        "algo.prompts_per_step=4",
        "algo.group_size=4",
        "sampling.max_new_tokens=4",
        "optim.lr=3e-3",
        "train.threads=1",
        "train.progress=false",
        "tracking.experiment=ui-test",
        "hydra/launcher=local",
        f"hydra.sweep.dir={tmp / 'sweep'}",
    )
    proc = run_cli(cmd, tmp, timeout=600)
    assert proc.returncode == 0, output_of(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(UI_LINE)]
    assert len(lines) == 2, "the link is printed when the sweep starts and when it ends"
    assert proc.stdout.strip().splitlines()[-2] == lines[-1], "the link is not among the last lines"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    parent = (tmp / "sweep" / "mlflow_parent_run_id").read_text().strip()
    from analysis.report import ReportOptions, build_report

    build_report(
        ReportOptions(
            out_dir=tmp / "report",
            tracking_uri=uri,
            parent_run_id=parent,
            control="intervention=none",
            min_seeds=2,
        )
    )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ui-test")
    return SimpleNamespace(
        tmp=tmp, uri=uri, parent=parent, url=lines[-1][len(UI_LINE) :], experiment=experiment
    )


@pytest.mark.slow
@pytest.mark.ci
def test_the_sweep_records_what_the_ui_needs(finished_sweep):
    s = finished_sweep
    client = MlflowClient(s.uri)
    assert s.experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(s.experiment.tags[SHARED_VIEW_TAG_PREFIX + share_key(s.parent)])
    assert view == comparison_view(s.parent)
    assert s.url == ui_url(s.uri, s.experiment.experiment_id, s.parent)
    children = client.search_runs([s.experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{s.parent}'")
    names = sorted(r.info.run_name for r in children)
    assert names == [f"intervention={i} seed={seed}" for i in ("hapo", "none") for seed in (0, 1)]
    assert all(r.data.tags[SWEEP_CONDITION_TAG] == r.info.run_name.rsplit(" ", 1)[0] for r in children)
    assert [a.path for a in client.list_artifacts(s.parent, "report") if a.path.endswith(".md")] == [
        "report/report.md"
    ]


@pytest.fixture(scope="module")
def ui_server(finished_sweep):
    """``mlflow ui`` on the sweep's store, on 127.0.0.1 and a free port (the README's command)."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--backend-store-uri",
        finished_sweep.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(finished_sweep.tmp / "mlflow-ui.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, cwd=finished_sweep.tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (finished_sweep.tmp / "mlflow-ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer /health in 180 s"
            time.sleep(1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    directory = Path(os.environ.get("QUADRL_UI_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def close_assistant(page) -> None:
    """Close MLflow's assistant side panel if it is open (it takes a third of the screenshots)."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


@pytest.mark.slow
@pytest.mark.ci
def test_a_newcomer_compares_the_conditions_in_a_real_browser(finished_sweep, ui_server, shots):
    if CHROMIUM is None:
        why = "chromium is not installed: apt-get install -y chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import expect, sync_playwright

    s, wait = finished_sweep, 60_000
    experiment_id = s.experiment.experiment_id
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new", "--disable-dev-shm-usage"]
        )
        try:
            # 1. the link the sweep printed (on this test's port): the conditions side by side
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(s.url.replace("http://127.0.0.1:5000", ui_server))
            expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=wait)
            for condition in ("intervention=hapo", "intervention=none"):
                expect(page.get_by_text(f"Group: {condition}", exact=True)).to_be_visible(timeout=wait)
                for seed in (0, 1):
                    expect(page.get_by_text(f"{condition} seed={seed}", exact=True)).to_be_visible()
                expect(page.get_by_text(f"{condition} (eval/accuracy)").first).to_be_attached()
            expect(page.get_by_text("Group by: sweep.condition")).to_be_visible()
            close_assistant(page)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / "1-sweep-comparison.png"))

            # 2. from the front page: the "Model training" switch, then the experiment opens on its runs
            fresh = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
            fresh.goto(ui_server + "/")
            fresh.get_by_text("Model training", exact=True).first.click(timeout=wait)
            fresh.get_by_role("link", name="ui-test").first.click(timeout=wait)
            expect(fresh.get_by_role("heading", name="Runs")).to_be_visible(timeout=wait)
            assert f"/experiments/{experiment_id}/runs" in fresh.url
            parent_name = MlflowClient(s.uri).get_run(s.parent).info.run_name
            expect(fresh.get_by_text(parent_name, exact=True)).to_be_visible(timeout=wait)
            close_assistant(fresh)
            fresh.wait_for_timeout(1000)
            fresh.screenshot(path=str(shots / "2-experiment-runs.png"))

            # 3. the report on the parent run
            page.goto(
                f"{ui_server}/#/experiments/{experiment_id}/runs/{s.parent}/artifacts?workflowType=machine_learning"
            )
            page.get_by_text("report", exact=True).first.click(timeout=wait)
            page.get_by_text("report.md", exact=True).first.click(timeout=wait)
            expect(page.get_by_text("quadrl report").first).to_be_visible(timeout=wait)
            close_assistant(page)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shots / "3-parent-report.png"))
        finally:
            browser.close()
    for name in ("1-sweep-comparison.png", "2-experiment-runs.png", "3-parent-report.png"):
        assert (shots / name).stat().st_size > 10_000
