"""Commands on the MLflow store: ``ui`` (the MLflow UI on 127.0.0.1), ``export-decisions`` (a run's decisions as
a scripted controller file) and ``export-outcomes`` (runs' outcome records as JSON lines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import TrackingOpt
from .output import console, fail


def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Start the MLflow UI on 127.0.0.1 against the same store, and print its URL."""
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    cmd = [
        mlflow_bin,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        tracking_uri,
        "--workers",
        "1",
    ]
    console.print(f"MLflow UI: [bold]http://127.0.0.1:{port}[/]  (Ctrl-C to stop)", highlight=False)
    sys.stdout.flush()
    try:
        subprocess.run(cmd, check=False, env=os.environ.copy())
    except KeyboardInterrupt:
        pass


def export_decisions(
    run_id: Annotated[str, typer.Argument(help="The MLflow child run whose decisions to export.")],
    out: Annotated[
        Path, typer.Argument(help="Output file (.json or .yaml), usable as --controller scripted:<out>.")
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Write a logged run's decisions as a scripted controller file, to replay the run without the model."""
    import mlflow
    import yaml

    from ..tracking import decisions_to_script, load_decisions

    mlflow.set_tracking_uri(tracking_uri)
    try:
        rows = load_decisions(run_id)
    except Exception as exc:
        fail(f"could not read the decisions of run {run_id} from {tracking_uri}: {exc}")
    script = decisions_to_script(rows)
    out.write_text(
        yaml.safe_dump(script, sort_keys=False)
        if out.suffix in (".yaml", ".yml")
        else json.dumps(script, indent=2)
    )
    console.print(
        f"wrote {len(script['decisions'])} decisions to {out}; replay with --controller scripted:{out}"
    )


def export_outcomes(
    args: Annotated[
        list[str],
        typer.Argument(help="One or more MLflow child run ids, then the output file (JSON lines)."),
    ],
    tracking_uri: TrackingOpt = "sqlite:///mlflow.db",
) -> None:
    """Collect the outcome records (counterfactual forks, oracle trials) of logged runs into one JSON-lines file:
    what the controller saw, the action, and what it caused vs not acting. Format: docs/reference/outcomes.md."""
    import mlflow

    from ..tracking import load_outcomes
    from ..training.outcomes import write_jsonl

    if len(args) < 2:
        fail(f"give at least one run id and the output file; got {len(args)} argument(s): {' '.join(args)}")
    *run_ids, out = args
    mlflow.set_tracking_uri(tracking_uri)
    records = []
    for run_id in run_ids:
        try:
            found = load_outcomes(run_id)
        except Exception as exc:
            fail(f"could not read the outcomes of run {run_id} from {tracking_uri}: {exc}")
        if not found:
            console.print(
                f"[yellow]run {run_id} has no outcomes.jsonl (it ran without --reflection counterfactual or "
                "--controller oracle)[/]"
            )
        records += found
    n = write_jsonl(records, out)
    console.print(f"wrote {n} outcome records from {len(run_ids)} run(s) to {out}")
