"""Sweep scaling: one 4-trial sweep (digits; the `rules` and `scripted` controllers x seeds 0 and 1) run
sequentially in this process and on a local Ray with 2 workers, with the SAME torch threads per trial on both
sides (1: what a Ray trial with 1 CPU gets), each side logging every cell to its own MLflow store. The two sides
alternate order over ``--repeats`` repeats (sequential first in even repeats, Ray first in odd ones), so neither
always runs on a warmer or a quieter machine.

    python benchmarks/sweep_scaling.py                      # --epochs 120 --repeats 2 by default
    python benchmarks/sweep_scaling.py --epochs 10          # a quick check of the script (Ray's fixed cost dominates)
    python benchmarks/sweep_scaling.py --endpoint           # first: one served model endpoint vs a copy per trial

Sized for 2 idle cores: a 120-epoch digits trial takes about T = 25 s on one thread, so a repeat costs about
4T (sequential) + 2T + ~15 s (Ray) = 6T + 15 s and two repeats about 12T + 30 s = 5.5 min, well inside 10 min even
if a trial takes 35 s. Longer trials would show Ray's gain more clearly (its fixed cost is amortised), shorter
ones mostly measure that fixed cost.

Ray's wall time includes starting Ray, its worker processes (each imports torch, MLflow and LangGraph), the MLflow
server the sweep serves a sqlite store through, and shutting Ray down. The script reports that fixed cost
separately: Ray start and shutdown are timed directly; the rest is Ray's wall time minus the trials' own time
(the MLflow child runs' start-to-end times, summed and divided by the 2 workers). Both sides must finish all 4
cells. Last line: ``speedup <median over repeats of sequential / ray>`` (target >= 1.3 on 2 cores).

``--endpoint`` first measures what LLM trials share: the embedded SmolLM2-135M loaded in-process (what each trial
process of the `local` controller pays: load time, resident memory) against one llama.cpp server (xllamacpp,
OpenAI-compatible HTTP, 2 slots) serving decision-sized chat requests (the registered tools' schemas as the
system prompt, an epoch report, 40 output tokens) to 1 client and to 2 concurrent clients.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import yaml

from mimic_learn import tracking
from mimic_learn.experiments import (
    Arm,
    SweepSpec,
    TrialResources,
    finished_cells,
    run_cell,
    run_cells_on_ray,
    start_ray,
)
from mimic_learn.tracking.tags import CELL

SCRIPT = {
    "decisions": [
        {"epoch": e, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.003 * 0.8**e, "reason": "decay"}}]}
        for e in range(1, 200, 5)
    ]
}


THREADS_PER_TRIAL = (
    1  # both sides: a Ray trial with 1 CPU runs torch on 1 thread, so the sequential trials do too
)
WORKERS = 2


def sequential(spec: SweepSpec, folder: Path) -> float:
    tracking.setup(f"sqlite:///{folder / 'sequential.db'}", "sweep-scaling")
    cells = spec.cells(folder, THREADS_PER_TRIAL, folder / "state-sequential")
    start = time.perf_counter()
    with mlflow.start_run(run_name="sequential"):
        for cell in cells:
            run_cell(cell.spec, cell.arm, cell.experiment, cell.regime, cell.seed)
    wall = time.perf_counter() - start
    assert len(finished_cells(spec.name)) == len(cells), "a sequential cell did not finish"
    return wall


def on_ray(spec: SweepSpec, folder: Path) -> dict[str, float]:
    """Ray's wall time and its parts: start, the trials (run_cells_on_ray, with the MLflow server), shutdown."""
    import ray

    tracking.setup(f"sqlite:///{folder / 'ray.db'}", "sweep-scaling")
    cells = spec.cells(folder, THREADS_PER_TRIAL, folder / "state-ray")
    start = time.perf_counter()
    start_ray(num_cpus=WORKERS)
    started = time.perf_counter()
    with mlflow.start_run(run_name="ray"):
        failed = run_cells_on_ray(
            cells, TrialResources(cpus=THREADS_PER_TRIAL), retries=0, echo=lambda _: None
        )
    trials_done = time.perf_counter()
    ray.shutdown()
    end = time.perf_counter()
    assert not failed and len(finished_cells(spec.name)) == len(cells), f"Ray cells failed: {failed}"
    return {"wall": end - start, "start": started - start, "shutdown": end - trials_done}


def cell_runs(db: Path) -> dict[str, tuple[float, float]]:
    """Finished cells of a store: cell -> (test accuracy, seconds from the child run's start to its end)."""
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'FINISHED'", output_format="list"
    )
    return {
        r.data.tags[CELL]: (r.data.metrics["test_acc"], (r.info.end_time - r.info.start_time) / 1000)
        for r in runs
        if CELL in r.data.tags
    }


def one_repeat(spec: SweepSpec, folder: Path, ray_first: bool) -> dict[str, float]:
    folder.mkdir(parents=True)
    # the scripted arm's path is relative to the cells' folder
    (folder / "decisions.yaml").write_text(yaml.safe_dump(SCRIPT))
    out: dict[str, float] = {}
    for side in ("ray", "sequential") if ray_first else ("sequential", "ray"):
        if side == "sequential":
            out["sequential"] = sequential(spec, folder)
        else:
            out |= {f"ray_{k}": v for k, v in on_ray(spec, folder).items()}
    seq_runs, ray_runs = cell_runs(folder / "sequential.db"), cell_runs(folder / "ray.db")
    assert len(seq_runs) == len(ray_runs) == 4, (seq_runs, ray_runs)
    out["sequential_trials"] = sum(t for _, t in seq_runs.values())
    out["ray_trials"] = sum(t for _, t in ray_runs.values())
    # Ray's fixed cost: its wall time minus the trials' own time spread over the workers
    out["ray_fixed"] = out["ray_wall"] - out["ray_trials"] / WORKERS
    out["ray_rest"] = out["ray_fixed"] - out["ray_start"] - out["ray_shutdown"]
    out["acc_diff"] = max(abs(seq_runs[k][0] - ray_runs[k][0]) for k in seq_runs)
    out["speedup"] = out["sequential"] / out["ray_wall"]
    return out


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load_copy(path: str) -> None:
    """In a fresh process: load the model as a `local` trial process does; print load seconds and memory."""
    import json

    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = path
    p.n_ctx, p.n_parallel, p.n_gpu_layers, p.verbosity = 4096, 1, 0, -1
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 1
    before, start = _rss_mb(), time.perf_counter()
    server = xllamacpp.Server(p)  # noqa: F841 (held while memory is measured)
    print(json.dumps({"load_s": time.perf_counter() - start, "mb": _rss_mb() - before}), flush=True)
    os._exit(0)  # without running the server's destructor, which did not always return


def _server_params(path: Path, slots: int, threads: int, port: int = 0):
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.n_ctx = 4096 * slots
    p.n_parallel = slots
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    p.n_gpu_layers = 0
    p.verbosity = -1
    if port:
        p.port = port
    return p


def _measure_copy(path: Path) -> None:
    """A copy in a fresh process, as a trial process of the `local` controller loads it (and because two
    xllamacpp servers in one process interfere: the second stopped answering in our tries)."""
    import json

    probe = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import sweep_scaling as b; b._load_copy({str(path)!r})"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    copy = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"endpoint: a model copy in a trial process (what `local` does; once per Ray worker process): load "
        f"{copy['load_s']:.1f} s, +{copy['mb']:.0f} MB resident ({path.name}, {path.stat().st_size / 2**20:.0f} MB file)"
    )


def _endpoint_body() -> dict:
    """A decision request with every registered tool in the system prompt."""
    import json

    from mimic_learn.tools import discover

    tools = {
        n: {"description": t.description, "args": t.json_schema()} for n, t in sorted(discover().items())
    }
    system = "You steer a training run. Call exactly one tool. Tools:\n" + json.dumps(tools)
    report = (
        "epoch 7/30: train loss 0.412 acc 0.871 | val loss 0.533 acc 0.842 | lr 0.001 dropout 0.2 | "
        "val loss rose from 0.519. Decide."
    )
    return {
        "model": "smollm2",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": report}],
        "max_tokens": 40,
        "temperature": 0,
        "cache_prompt": True,
    }


def _run_clients(ask: Callable[[], dict], clients: int, requests_per_client: int) -> float:
    """Wall seconds for ``clients`` threads each sending ``requests_per_client`` requests."""
    import threading

    def client() -> None:
        for _ in range(requests_per_client):
            ask()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def endpoint(requests_per_client: int = 6) -> None:
    """One served model for every trial of a node vs a model copy in each trial process (printed lines)."""
    import json
    import threading
    import urllib.request

    import xllamacpp

    from mimic_learn.agents.local import find_smollm2_gguf
    from mimic_learn.experiments import free_port

    path = find_smollm2_gguf()
    body = _endpoint_body()
    _measure_copy(path)
    port = free_port()
    server = xllamacpp.Server(_server_params(path, 2, 2, port))  # noqa: F841 (serves while this function runs)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def ask() -> dict:
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as reply:
            return json.loads(reply.read())

    # Warm both slots' prompt caches (the system prompt, ~2k tokens), as a sweep's first decisions would.
    warm = [threading.Thread(target=ask) for _ in range(2)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    usage = ask()["usage"]
    rates = {}
    for clients in (1, 2):
        wall = _run_clients(ask, clients, requests_per_client)
        rates[clients] = clients * requests_per_client / wall
        print(
            f"endpoint: one llama.cpp server (2 slots, 2 threads), {clients} client(s) x {requests_per_client} "
            f"requests ({usage['prompt_tokens']} prompt tokens, 40 out): {rates[clients]:.2f} requests/s, "
            f"{wall / (clients * requests_per_client):.2f} s each on average"
        )
    print(f"endpoint: 2 clients / 1 client throughput ratio {rates[2] / rates[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=120, help="epochs per trial (default sized for 2 idle cores)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeats, alternating which side runs first")
    parser.add_argument("--regime", default="full")
    parser.add_argument(
        "--endpoint", action="store_true", help="first measure a served model vs per-trial copies"
    )
    parser.add_argument("--endpoint-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.endpoint_only:
        endpoint()
        sys.stdout.flush()
        os._exit(0)  # see _load_copy
    if args.endpoint:  # in a child process: llama.cpp's threads must not run beside the sweeps measured next
        subprocess.run([sys.executable, __file__, "--endpoint-only"], check=True)
    if args.repeats < 2:
        parser.error(f"--repeats={args.repeats} is below 2; the order alternates over at least 2 repeats")
    folder = Path(tempfile.mkdtemp(prefix="sweep_scaling_"))
    os.chdir(folder)  # .mimic/ (graph state, Ray results) goes here, not into the repository
    spec = SweepSpec(
        name="scaling",
        task="digits",
        regime=args.regime,
        epochs=args.epochs,
        seeds=[0, 1],
        arms=[
            Arm("rules", "rules"),
            Arm("scripted", "scripted:decisions.yaml"),
        ],
    )
    load = os.getloadavg()
    print(
        f"sweep: digits regime {args.regime}, {args.epochs} epochs, arms rules + scripted x seeds 0,1 = 4 trials, "
        f"{THREADS_PER_TRIAL} torch thread per trial on both sides, {args.repeats} repeats in alternating order; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    repeats = []
    for r in range(args.repeats):
        ray_first = r % 2 == 1
        m = one_repeat(spec, folder / f"repeat{r}", ray_first)
        repeats.append(m)
        print(
            f"repeat {r} ({'Ray' if ray_first else 'sequential'} first): sequential {m['sequential']:.1f} s "
            f"(trials {m['sequential_trials']:.1f} s); Ray {WORKERS} workers {m['ray_wall']:.1f} s = trials "
            f"{m['ray_trials']:.1f} s / {WORKERS} + fixed {m['ray_fixed']:.1f} s (Ray start {m['ray_start']:.1f} s, "
            f"shutdown {m['ray_shutdown']:.1f} s, worker start-up with imports + MLflow server + scheduling "
            f"{m['ray_rest']:.1f} s); speedup {m['speedup']:.2f}; max |test acc difference| {m['acc_diff']:.4f}; "
            f"load {os.getloadavg()[0]:.2f}"
        )

    def med(key: str) -> float:
        return statistics.median(m[key] for m in repeats)

    print(
        f"medians over {args.repeats} repeats: sequential {med('sequential'):.1f} s, Ray {med('ray_wall'):.1f} s; "
        f"Ray's fixed cost {med('ray_fixed'):.1f} s (start {med('ray_start'):.1f} s, shutdown "
        f"{med('ray_shutdown'):.1f} s, the rest {med('ray_rest'):.1f} s); a trial takes "
        f"{med('sequential_trials') / 4:.1f} s sequentially, {med('ray_trials') / 4:.1f} s on a Ray worker"
    )
    print(f"stores and Ray results in {folder}")
    print(f"speedup {med('speedup'):.2f}")


if __name__ == "__main__":
    main()
