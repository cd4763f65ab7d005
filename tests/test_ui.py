"""``python -m study.ui``: the MLflow UI and optuna-dashboard on a finished study, in a real browser.

The browser is Debian's headless Chromium driven by Selenium through Debian's chromedriver (no
browser download); ``.ci/run`` installs both.  Screenshots of every step are saved under
``test-output/browser/`` in the project folder.  Each test stops the server and the browser it
started, and checks that nothing of them is left.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REGIMES, ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = ROOT / "test-output" / "browser"
NAME_CELL = '.ag-row [col-id="attributes.`Run Name`"]'
# The compare view's tables: params are an HTML table; metrics two virtualised grids (names, values)
# whose cells line up by their ``top`` offset.
PARAM_ROWS_JS = """return Array.from(document.querySelectorAll('tr'))
  .map(r => Array.from(r.children).map(c => c.textContent.trim()));"""
METRIC_ROWS_JS = """
const box = Array.from(document.querySelectorAll('.du-bois-light-collapse-content-box'))
  .find(b => b.querySelector('button[aria-label="Metrics - Show diff only"]'));
if (!box) return null;
const grids = box.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer');
const cells = g => Array.from(g.children).map(c => [c.style.top, c.textContent.trim()]);
const names = Object.fromEntries(cells(grids[0]));
const values = {};
for (const [top, text] of cells(grids[grids.length - 1])) (values[top] = values[top] || []).push(text);
const rows = Object.entries(names).map(([top, name]) => [name, values[top] || []]);
return rows.length ? rows : null;"""


def ui(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.ui", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env, **kw)


class UiProcess:
    """``python -m study.ui`` running in its own session; the lines it printed so far."""

    def __init__(self, *args: str):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="study-ui-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "study.ui", *args], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, text=True)

    final_output = ""

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, pattern: str, timeout: float = 150.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            assert self.proc.poll() is None, f"study.ui exited ({self.proc.returncode}):\n{self.output()}"
            time.sleep(0.3)
        raise AssertionError(f"study.ui printed no {pattern!r} in {timeout}s:\n{self.output()}")

    def interrupt(self) -> int:
        """Ctrl-C, as a user stops it; returns its exit status."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.kill()

    def kill(self) -> None:
        self.final_output = self.output()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def left_behind(url: str) -> list[str]:
    """Processes still running with the server's port on their command line."""
    port = url.split(":")[2].split("/")[0]
    out = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout
    return out.split()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture
def browser():
    """Headless Chromium (Debian's) under Selenium, with a private profile; quit and checked after."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert Path(path).exists(), (f"{path} is missing: install Debian's {package} "
                                     f"(apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # as root in a container: no sandbox; no background networking (this machine's network is closed)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=2400,1200", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        deadline = time.time() + 10  # quit() returns when ChromeDriver has gone; its browser may take a moment
        while (left := subprocess.run(["pgrep", "-f", profile], capture_output=True, text=True).stdout.split()) \
                and time.time() < deadline:
            time.sleep(0.2)
        for pid in left:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        shutil.rmtree(profile, ignore_errors=True)
        assert not left, f"Chromium processes left behind: {left}"


def run_names(driver) -> list[str]:
    """The run names in the runs table (a cell shows the run's colour chip, then its name); empty
    while the table re-renders under us (then a wait asks again)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    try:
        return [c.text.splitlines()[-1] for c in driver.find_elements(By.CSS_SELECTOR, NAME_CELL) if c.text.strip()]
    except StaleElementReferenceException:
        return []


def test_bad_inputs_fail_with_one_line(tmp_path):
    r = ui(str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "study_dir" in r.stderr
    r = ui(str(tmp_path), "--port", "70000")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_refused(finished_study):
    import socket
    study_dir = finished_study.dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = ui(str(study_dir), "--port", str(s.getsockname()[1]))
    assert r.returncode == 2 and "--port" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compare_the_regimes_in_the_mlflow_ui(finished_study, browser):
    """From a finished study to the side-by-side comparison, as the README tells a user to go."""
    import pyarrow.parquet as pq
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    study_dir = finished_study.dir
    trials = pq.read_table(study_dir / "results" / "trials.parquet").to_pandas()
    tuned = trials[(trials.phase == "confirm") & (trials.condition == "tuned") & (trials.prune_round == 2)]
    server = UiProcess(str(study_dir))
    try:
        runs_url = server.wait_for(r"MLflow UI for study 'tiny': (http://127\.0\.0\.1:\d+/\S+)").group(1)
        link = server.wait_for(r"Compare the regimes .*\n\s+(http://\S+)").group(1)
        base = runs_url.split("/#/")[0]
        wait = WebDriverWait(browser, 60)

        # 1. the experiment opens on its runs table, with the study's parent run
        browser.get(runs_url)
        wait.until(lambda d: "tiny" in run_names(d))
        browser.save_screenshot(str(SHOTS / "1-experiment.png"))

        # 2. expand the parent: the child runs of every regime, named "<regime> lr=<lr> seed=<seed>"
        parent = next(c for c in browser.find_elements(By.CSS_SELECTOR, NAME_CELL) if c.text.endswith("tiny"))
        parent.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: all(any(n.startswith(f"{r} lr=") for n in run_names(d)) for r in REGIMES))
        browser.save_screenshot(str(SHOTS / "2-child-runs.png"))

        # 3. the README's filter: each regime at its own best LR on the confirmation seeds
        search = browser.find_element(By.CSS_SELECTOR, 'input[placeholder*="metrics."]')
        search.send_keys("tags.phase = 'confirm' and tags.condition = 'tuned' and params.prune_round = '2'",
                         Keys.ENTER)
        wait.until(lambda d: {n.split()[0] for n in run_names(d) if " lr=" in n} == set(REGIMES)
                   and all(" tuned" in n for n in run_names(d) if " lr=" in n))
        browser.save_screenshot(str(SHOTS / "3-filtered.png"))

        # 4. tick the child runs and press Compare
        ticked = 0
        for cell in browser.find_elements(By.CSS_SELECTOR, NAME_CELL):
            if " lr=" in cell.text:
                row = cell.find_element(By.XPATH, "./ancestor::div[contains(@class,'ag-row')][1]")
                rid = row.get_attribute("row-id")
                browser.find_element(By.CSS_SELECTOR, f'.ag-row[row-id="{rid}"] input.ag-checkbox-input').click()
                ticked += 1
        assert ticked == len(REGIMES) * 2  # K = 2 confirmation seeds
        compare = wait.until(lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button")
                                             if b.text.strip().startswith("Compare")), None))
        compare.click()
        wait.until(lambda d: "compare-runs" in d.current_url and f"Comparing {ticked} Runs" in d.page_source)
        time.sleep(1)  # let the parallel-coordinates chart draw before the screenshot
        browser.save_screenshot(str(SHOTS / "4-compare.png"))

        # 5. the compare view shows the learning-rate params and the accuracy metrics of every run
        params = {row[0]: row[1:] for row in browser.execute_script(PARAM_ROWS_JS) if row}
        for key in ("lr", "log10_lr", "regime"):
            assert len(params.get(key, [])) == ticked, f"param {key} not shown for every run: {params.get(key)}"
        assert set(params["regime"]) == set(REGIMES)
        assert {float(v) for v in params["lr"]} == set(tuned.lr)
        metrics = dict(wait.until(lambda d: d.execute_script(METRIC_ROWS_JS)))
        for key, column in (("final_test_acc", "test_acc"), ("final_val_acc", "val_acc")):
            shown = sorted(float(v) for v in metrics.get(key, []))
            assert shown == pytest.approx(sorted(tuned[column]), abs=1e-3), (key, shown)  # shown to 3 decimals
        assert {"test_acc", "val_acc", "epoch_lr"} <= set(metrics)

        # 6. the README's chart: Box Plot, X = regime, Y = final_test_acc
        browser.find_element(By.XPATH, "//*[normalize-space(text())='Box Plot']").click()
        for selector, choice in (("x-axis-selector", "regime"), ("y-axis-selector", "final_test_acc")):
            browser.find_element(By.ID, selector).click()
            option = wait.until(lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                                if o.text.strip() == choice), None))
            option.click()
        wait.until(lambda d: "Select parameters/metrics to plot" not in d.page_source)
        time.sleep(1)
        browser.save_screenshot(str(SHOTS / "5-box-plot.png"))

        # 7. the link study.ui printed opens the same comparison directly
        browser.get(link)
        wait.until(lambda d: f"Comparing {ticked} Runs" in d.page_source)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert all(f"{r} lr=" in body for r in REGIMES)
        browser.save_screenshot(str(SHOTS / "6-printed-link.png"))

        # 8. the parent run holds the summary, the tables and the figures
        browser.get(runs_url)
        wait.until(lambda d: "tiny" in run_names(d))
        parent = next(c for c in browser.find_elements(By.CSS_SELECTOR, NAME_CELL) if c.text.endswith("tiny"))
        parent.find_element(By.TAG_NAME, "a").click()
        wait.until(lambda d: "/runs/" in d.current_url)
        browser.get(browser.current_url.split("?")[0].rstrip("/") + "/artifacts")
        wait.until(lambda d: "summary.txt" in d.page_source and "results" in d.page_source)
        browser.find_element(By.XPATH, "//*[normalize-space(text())='summary.txt']").click()
        wait.until(lambda d: "Verdicts" in d.page_source)  # the summary, previewed from the study's mlartifacts/
        browser.save_screenshot(str(SHOTS / "7-parent-artifacts.png"))
    finally:
        status = server.interrupt()
    assert status == 0 and "Server stopped." in server.final_output, server.final_output
    assert not answers(f"{base}/health"), "the MLflow server still answers after Ctrl-C"
    assert not left_behind(base), "MLflow server processes left behind"


def test_optuna_dashboard_on_the_study(finished_study, browser):
    import json
    from selenium.webdriver.support.ui import WebDriverWait
    study_dir = finished_study.dir
    server = UiProcess(str(study_dir), "--optuna")
    try:
        url = server.wait_for(r"optuna-dashboard for study 'tiny': (http://127\.0\.0\.1:\d+/)").group(1)
        with urllib.request.urlopen(f"{url}api/studies", timeout=10) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert {s["study_name"] for s in studies} == {f"tiny.{r}" for r in REGIMES}
        browser.get(url)
        WebDriverWait(browser, 60).until(lambda d: all(f"tiny.{r}" in d.page_source for r in REGIMES))
        browser.save_screenshot(str(SHOTS / "8-optuna-dashboard.png"))
    finally:
        status = server.interrupt()
    assert status == 0
    assert not answers(f"{url}api/studies") and not left_behind(url)
