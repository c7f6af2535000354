"""Make the documentation's picture (docs/assets/overview.png) from a real run: the run's Traces list in the MLflow
UI (one line per decision), one decision's trace (its node and tool spans), and the run's validation and knob
plots.

    python scripts/screenshot.py                 # runs tests/integration/test_ui_browser.py (a scripted 6-epoch digits run,
                                                 # `mimic-learn ui`, headless Chromium), then composes
    python scripts/screenshot.py --from DIR      # composes from a folder the browser test already filled
                                                 # (MIMIC_SCREENSHOT_DIR=DIR; what .ci/run does)

Needs /usr/bin/chromium and playwright (`bash scripts/install_browser.sh`). Exits 1, naming what is missing, if
the browser test fails or left no screenshot: the picture is never silently kept stale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs/assets/overview.png"
LIST = (
    "03_run_traces.png"  # the run's Traces list, one row per decision (tests/integration/test_ui_browser.py)
)
TRACE = "04_trace_reflect.png"  # the epoch-2 trace, reflect span selected
# Parts of the 1920x1080 screenshots kept (left, top, right, bottom): the list's rows, the trace's spans.
LIST_BOX = (200, 150, 1920, 530)
TRACE_BOX = (0, 0, 1920, 720)
PLOTS = ("validation.png", "knobs.png")
WIDTH = 1600


def run_browser_test(folder: Path) -> None:
    env = {**os.environ, "MIMIC_SCREENSHOT_DIR": str(folder)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "browser",
        "-p",
        "no:cacheprovider",
        "tests/integration/test_ui_browser.py",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        sys.exit(f"the browser test failed (exit {done.returncode}); no picture made")


def compose(folder: Path, out: Path = OUT) -> Path:
    missing = [name for name in (LIST, TRACE, *PLOTS) if not (folder / name).is_file()]
    if missing:
        sys.exit(
            f"missing in {folder}: {', '.join(missing)} (run tests/integration/test_ui_browser.py with MIMIC_SCREENSHOT_DIR)"
        )
    shots = [
        Image.open(folder / LIST).convert("RGB").crop(LIST_BOX),
        Image.open(folder / TRACE).convert("RGB").crop(TRACE_BOX),
    ]
    shots = [shot.resize((WIDTH, round(shot.height * WIDTH / shot.width))) for shot in shots]
    plots = [Image.open(folder / name).convert("RGB") for name in PLOTS]
    half = WIDTH // len(plots)
    plots = [p.resize((half, round(p.height * half / p.width))) for p in plots]
    height = sum(shot.height for shot in shots) + max(p.height for p in plots)
    canvas = Image.new("RGB", (WIDTH, height), "white")
    top = 0
    for shot in shots:
        canvas.paste(shot, (0, top))
        top += shot.height
    for i, plot in enumerate(plots):
        canvas.paste(plot, (i * half, top))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="a folder the browser test filled")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.source is not None:
        print(f"wrote {compose(args.source, args.out)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_browser_test(Path(tmp))
        print(f"wrote {compose(Path(tmp), args.out)}")


if __name__ == "__main__":
    main()
