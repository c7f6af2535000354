"""End to end through the MLflow UI: a scripted run, ``mimic-learn ui``, headless Chromium.

The test trains a 6-epoch digits run with a scripted controller through the CLI, starts ``mimic-learn ui``
on a free loopback port, checks that the server listens on 127.0.0.1 only, then drives Debian's
``/usr/bin/chromium`` through Playwright (Playwright's own browser download is blocked here, hence
``executable_path``) and asserts that the run page, the ``decisions.json`` table, the run's Traces list (each
decision's name and its one-line previews) and one trace (its node and tool spans, the reflection text) show
what a user should see. Screenshots, and the run's plots, go to ``$MIMIC_SCREENSHOT_DIR`` (default: the
test's tmp dir); ``scripts/screenshot.py`` composes the documentation's picture from them. ``scripts/install_browser.sh`` installs chromium and playwright; without them the test skips,
except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPERIMENT = "mimic-digits"  # the CLI's default experiment for --task digits
SCRIPT = """\
decisions:
  - epoch: 1
    tool_calls:
      - {name: set_lr, args: {lr: 0.002, reason: "loss still falling fast; raise the step"}}
  - epoch: 2
    tool_calls:
      - {name: set_dropout, args: {dropout: 0.3, reason: "train/val gap widening; regularise"}}
  - epoch: 4
    tool_calls:
      - {name: set_lr, args: {lr: 0.0005, reason: "validation flattening; smaller steps"}}
"""
EPOCHS = 6
# After epoch 2 the log_only reflection judges the epoch-1 set_lr: "... Verdict: it helped." (or "hurt" ...).
REFLECTION_TEXT = "Decision after epoch 1 (lr=0.002)"
VERDICT_TEXT = "Verdict:"

# The whole test, setup included (generous: a loaded 2-core CI box); every wait below is capped by what is left.
TOTAL_BUDGET_S = 360
RUN_TIMEOUT_S = 180  # the scripted 6-epoch digits run takes ~30 s on an idle CPU
SERVER_TIMEOUT_S = 120  # `mlflow server` answers after ~15 s idle; over 60 s was seen at load 14
UI_TIMEOUT_S = 30  # per assertion: the SPA fetches and renders lazily


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: run scripts/install_browser.sh)")
    pytest.skip(f"{message}; run scripts/install_browser.sh")


@pytest.fixture
def sync_api():
    """playwright.sync_api, once /usr/bin/chromium and playwright are known to be there (checked first,
    before the slow run and server)."""
    return _require_browser()


def _require_browser():
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _missing(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _missing("the playwright Python package is not installed (pip install playwright)")
    return sync_api


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("mimic-learn")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("mimic-learn")
    return [found] if found else [sys.executable, "-m", "mimic_learn.cli"]


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, from /proc/net/tcp{,6} (no psutil or ss needed)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            found.add(socket.inet_ntop(family, raw))
    return found


def _non_loopback_ipv4() -> set[str]:
    addrs = set()
    try:
        addrs.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    try:  # the address of the default route; a UDP connect sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addrs.add(s.getsockname()[0])
    except OSError:
        pass
    return {a for a in addrs if not a.startswith("127.")}


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the process group this test started (`mimic-learn ui` -> `mlflow server` -> uvicorn, huey)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    left = _group_alive(proc.pid)
    assert not left, f"processes of the UI server survived SIGKILL: {left}"


@pytest.fixture
def deadline() -> float:
    """When the test's time is up (monotonic clock)."""
    return time.monotonic() + TOTAL_BUDGET_S


def _left(deadline: float, cap: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 1:
        pytest.fail(f"out of the test's {TOTAL_BUDGET_S} s budget before {what}")
    return min(cap, left)


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MIMIC_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def logged_run(tmp_path: Path, deadline: float) -> dict:
    """A scripted 6-epoch digits run logged to ``<tmp>/mlflow.db`` through the CLI."""
    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    cmd = _cli() + [
        "run",
        "--controller",
        f"scripted:{script}",
        "--task",
        "digits",
        "--epochs",
        str(EPOCHS),
        "--tracking-uri",
        uri,
        "--no-log-model",
        "--threads",
        "1",
    ]
    timeout = _left(deadline, RUN_TIMEOUT_S, "mimic-learn run")
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"mimic-learn run took over {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, f"mimic-learn run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {"tracking_uri": uri, "cwd": tmp_path}


@pytest.fixture
def ui_server(logged_run: dict, deadline: float) -> Iterator[str]:
    """`mimic-learn ui` on a free loopback port; yields its base URL and always kills it afterwards."""
    port = _free_port()
    log = (logged_run["cwd"] / "ui.log").open("w")
    proc = subprocess.Popen(
        _cli() + ["ui", "--port", str(port), "--tracking-uri", logged_run["tracking_uri"]],
        cwd=logged_run["cwd"],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the finalizer stops mlflow's children too
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait = _left(deadline, SERVER_TIMEOUT_S, "starting mimic-learn ui")
        ready_by = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mimic-learn ui exited with {proc.returncode}:\n{_tail(log.name)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > ready_by:
                pytest.fail(f"mimic-learn ui did not answer on {base} in {wait:.0f} s:\n{_tail(log.name)}")
            time.sleep(0.5)
        yield base
    finally:
        _kill_group(proc)
        log.close()


def _tail(path: str, n: int = 3000) -> str:
    try:
        return Path(path).read_text()[-n:]
    except OSError:
        return ""


def _ids(base: str) -> dict[str, str]:
    """Experiment id, child run id and name, and the epoch-2 trace id, asked of the UI's own server."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=base)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"experiment {EXPERIMENT} not on the server"
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mimic.role` = 'child'")
    assert len(runs) == 1, f"expected one child run, got {[r.info.run_id for r in runs]}"
    run = runs[0].info
    thread = runs[0].data.tags["mimic.thread_id"]
    try:
        traces = client.search_traces(locations=[exp.experiment_id], run_id=run.run_id)
    except TypeError:  # older MLflow 3 spelling
        traces = client.search_traces(experiment_ids=[exp.experiment_id], run_id=run.run_id)
    by_epoch = {t.info.tags.get("epoch"): t.info.trace_id for t in traces}
    assert "2" in by_epoch, f"no trace tagged epoch=2 among {by_epoch}"
    sessions = {t.info.trace_metadata.get("mlflow.trace.session") for t in traces}
    assert sessions == {thread}, f"the run's traces are not one session {thread}: {sessions}"
    names = sorted(t.info.tags.get("mlflow.traceName") for t in traces)
    assert names == [f"epoch {e} decision" for e in range(1, EPOCHS)], names
    return {
        "exp": exp.experiment_id,
        "run": run.run_id,
        "run_name": run.run_name,
        "trace": by_epoch["2"],
        "session": thread,
    }


def _save_plots(base: str, run_id: str, folder: Path) -> None:
    """The run's validation and knob plots next to the screenshots (scripts/screenshot.py composes them)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=base)
    for name in ("validation.png", "knobs.png"):
        client.download_artifacts(run_id, f"plots/{name}", str(folder))


def _dismiss_overlays(page) -> None:
    """Best effort: close the MLflow Assistant side panel and guidance popovers, for clearer screenshots."""
    for name in ("Close guidance", "Close"):
        buttons = page.get_by_role("button", name=name, exact=True)
        for i in range(buttons.count()):
            try:
                if buttons.nth(i).is_visible():
                    buttons.nth(i).click(timeout=2_000)
            except Exception:
                pass


def _assert_loopback_only(port: int) -> None:
    """The UI listens on the loopback interface only."""
    addrs = _listen_addresses(port)
    assert addrs == {"127.0.0.1"}, f"mimic-learn ui listens on {addrs}, expected 127.0.0.1 only"
    for addr in _non_loopback_ipv4():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0, f"the UI answers on {addr}:{port}"


def _urls(base: str, ids: dict[str, str]) -> dict[str, str]:
    run_url = f"{base}/#/experiments/{ids['exp']}/runs/{ids['run']}"
    return {
        "run": run_url,
        "decisions": f"{run_url}/artifacts/decisions.json",
        "run_traces": f"{run_url}/traces",
        "trace": f"{base}/#/experiments/{ids['exp']}/traces?selectedEvaluationId={ids['trace']}",
    }


@dataclass
class _Screen:
    """A browser page and the checks a user does by looking at it."""

    page: Any
    expect: Any
    deadline: float

    def shown(self, text: str, exact: bool = False):
        """Wait until ``text`` is rendered, scroll it into view and check it is on screen."""
        timeout_ms = 1000 * _left(self.deadline, UI_TIMEOUT_S, f"looking for {text!r}")
        loc = self.page.get_by_text(text, exact=exact).locator("visible=true").first
        self.expect(loc).to_be_visible(timeout=timeout_ms)
        loc.scroll_into_view_if_needed(timeout=timeout_ms)
        self.expect(loc).to_be_in_viewport(timeout=timeout_ms)
        return loc

    def listed(self, text: str) -> None:
        """``text`` is in the Traces list. MLflow's table sometimes draws a row blank (no cells) until the page
        is drawn again, so a missing row gets up to two reloads (as a user would) before the test fails. (The
        search box is no way round it: it searches the traces' full requests, not their previews.)"""
        for attempt in range(3):
            try:
                self.expect(self.page.get_by_text(text).locator("visible=true").first).to_be_visible(
                    timeout=10_000
                )
                return
            except AssertionError:
                if attempt == 2:
                    raise
            self.page.reload(wait_until="domcontentloaded")
            self.shown(EXPERIMENT, exact=True)
            ungroup = self.page.get_by_text("Group by session", exact=True)
            ungroup.click()  # a reload brings the default (grouped by session) back
            self.page.wait_for_timeout(1_000)

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="domcontentloaded")
        self.shown(EXPERIMENT, exact=True)  # the SPA has rendered its shell

    def screenshot(self, path: Path) -> None:
        _dismiss_overlays(self.page)
        self.page.screenshot(path=str(path))


def _check_run_overview(screen: _Screen, urls: dict[str, str], ids: dict[str, str], folder: Path) -> None:
    """The child run's overview: its name, id, status and a logged metric."""
    screen.open(urls["run"])
    screen.shown(ids["run_name"], exact=True)
    screen.shown("test_acc", exact=True)
    screen.shown(ids["run"], exact=True)
    screen.screenshot(folder / "01_run.png")


def _check_decisions(screen: _Screen, urls: dict[str, str], folder: Path) -> None:
    """The decisions table artifact: the reflection text, then the tool names and a reason."""
    screen.open(urls["decisions"])
    screen.shown(REFLECTION_TEXT)
    screen.shown("set_dropout", exact=True)
    screen.shown("train/val gap widening; regularise", exact=True)
    screen.shown("set_lr", exact=True)
    screen.screenshot(folder / "02_decisions.png")


def _check_run_traces(screen: _Screen, urls: dict[str, str], ids: dict[str, str], folder: Path) -> None:
    """The run's traces tab lists the decisions like a log: name, input and output previews."""
    screen.open(urls["run_traces"])
    screen.shown(ids["session"], exact=True)  # grouped by session (the default): one session
    screen.page.get_by_text("Group by session", exact=True).click()  # one row per decision
    for text in [f"epoch {e} · val acc " for e in range(1, EPOCHS)] + [
        "set_lr 0.001→0.002 ✓",
        "set_dropout 0.2→0.3 ✓ · reflection: Decision after epoch 1 (lr=0.002)",
        "no change · reflection: ",  # epoch 3: the script made no call
    ]:
        screen.listed(text)
    assert screen.page.get_by_text('{"epoch": ').count() == 0, "a raw graph state is shown as a preview"
    screen.screenshot(folder / "03_run_traces.png")


def _check_trace(screen: _Screen, urls: dict[str, str], folder: Path) -> None:
    """One trace (epoch 2): the graph's spans with the tool span, then the reflect span's output."""
    screen.page.goto(urls["trace"], wait_until="domcontentloaded")
    for span in ("observe", "decide", "tools", "set_dropout", "apply"):
        screen.shown(span, exact=True)
    _dismiss_overlays(screen.page)
    screen.shown("reflect", exact=True).click()
    screen.shown(REFLECTION_TEXT)
    screen.shown(VERDICT_TEXT)
    screen.page.screenshot(path=str(folder / "04_trace_reflect.png"))


def test_ui_shows_run_decisions_and_trace(
    sync_api, ui_server: str, screenshot_dir: Path, deadline: float
) -> None:
    base = ui_server
    _assert_loopback_only(int(base.rsplit(":", 1)[1]))
    ids = _ids(base)
    urls = _urls(base, ids)

    with sync_api.sync_playwright() as pw:
        page = None
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(1000 * UI_TIMEOUT_S)
            screen = _Screen(page, sync_api.expect, deadline)
            _check_run_overview(screen, urls, ids, screenshot_dir)
            _check_decisions(screen, urls, screenshot_dir)
            _check_run_traces(screen, urls, ids, screenshot_dir)
            _check_trace(screen, urls, screenshot_dir)
            _save_plots(base, ids["run"], screenshot_dir)
        except Exception:
            if page is not None:
                try:
                    page.screenshot(path=str(screenshot_dir / "failure.png"))
                except Exception:
                    pass
            raise
        finally:
            browser.close()
    print("\n".join(f"{k}: {v}" for k, v in urls.items()))
    print(f"screenshots: {screenshot_dir}")
