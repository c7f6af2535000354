"""Sweep scaling: one 4-trial sweep (digits; the `rules` and `scripted` controllers x seeds 0 and 1), run
sequentially in this process with 2 torch threads per trial (what `reproduce` does), then on a local Ray with
2 workers of 1 thread each (what `sweep` does), each logging every cell to its own MLflow store.

    python benchmarks/sweep_scaling.py                  # --epochs 150 --regime full by default
    python benchmarks/sweep_scaling.py --endpoint       # first: one served model endpoint vs a copy per trial

Ray's wall time includes starting Ray, its worker processes (each imports torch, MLflow and LangGraph) and
shutting it down (a fixed cost of about 15 s here, so the speedup depends on how long a trial is: 150 epochs of
digits take about 30 s). Both runs must finish all 4 cells. Last line: `speedup <sequential / ray>` (target >= 1.3
on 2 cores). Measured on this 2-core machine: see the README's section "Sweeps on Ray".

``--endpoint`` first measures what LLM trials share: the embedded SmolLM2-135M loaded in-process (what each trial
process of the `local` controller pays: load time, resident memory) against one llama.cpp server (xllamacpp,
OpenAI-compatible HTTP, 2 slots) serving decision-sized chat requests (the registered tools' schemas as the
system prompt, an epoch report, 40 output tokens) to 1 client and to 2 concurrent clients.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import yaml

from mimic_learn import tracking
from mimic_learn.experiments import finished_cells, run_cell
from mimic_learn.sweep import ArmSpec, SweepSpec, TrialResources, run_cells_on_ray, start_ray

SCRIPT = {
    "decisions": [
        {"epoch": e, "tool_calls": [{"name": "set_lr", "args": {"lr": 0.003 * 0.8**e, "reason": "decay"}}]}
        for e in range(1, 200, 5)
    ]
}


def sequential(spec: SweepSpec, folder: Path, threads: int) -> float:
    tracking.setup(f"sqlite:///{folder / 'sequential.db'}", "sweep-scaling")
    cells = spec.cells(folder, threads, folder / "state-sequential")
    start = time.perf_counter()
    with mlflow.start_run(run_name="sequential"):
        for cell in cells:
            run_cell(cell.spec, cell.arm, cell.experiment, cell.regime, cell.seed)
    wall = time.perf_counter() - start
    assert len(finished_cells(spec.name)) == len(cells), "a sequential cell did not finish"
    return wall


def on_ray(spec: SweepSpec, folder: Path, workers: int) -> tuple[float, float]:
    import ray

    tracking.setup(f"sqlite:///{folder / 'ray.db'}", "sweep-scaling")
    cells = spec.cells(folder, 1, folder / "state-ray")
    start = time.perf_counter()
    start_ray(num_cpus=workers)
    started = time.perf_counter() - start
    with mlflow.start_run(run_name="ray"):
        failed = run_cells_on_ray(cells, TrialResources(cpus=1), retries=0, echo=lambda _: None)
    ray.shutdown()
    wall = time.perf_counter() - start
    assert not failed and len(finished_cells(spec.name)) == len(cells), f"Ray cells failed: {failed}"
    return wall, started


def test_accuracies(db: Path) -> dict[str, float]:
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'FINISHED'", output_format="list"
    )
    return {
        r.data.tags["mimic.cell"]: r.data.metrics["test_acc"] for r in runs if "mimic.cell" in r.data.tags
    }


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


def endpoint(requests_per_client: int = 6) -> None:
    """One served model for every trial of a node vs a model copy in each trial process (printed lines)."""
    import json
    import threading
    import urllib.request

    import xllamacpp

    from mimic_learn.agents.local import find_smollm2_gguf
    from mimic_learn.sweep import free_port
    from mimic_learn.tools import discover

    path = find_smollm2_gguf()
    tools = {
        n: {"description": t.description, "args": t.json_schema()} for n, t in sorted(discover().items())
    }
    system = "You steer a training run. Call exactly one tool. Tools:\n" + json.dumps(tools)
    report = (
        "epoch 7/30: train loss 0.412 acc 0.871 | val loss 0.533 acc 0.842 | lr 0.001 dropout 0.2 | "
        "val loss rose from 0.519. Decide."
    )

    def params(slots: int, threads: int, port: int = 0):
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

    # A copy in a fresh process, as a trial process of the `local` controller loads it (and because two
    # xllamacpp servers in one process interfere: the second stopped answering in our tries).
    probe = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import sweep_scaling as b; b._load_copy({str(path)!r})"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    copy = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"endpoint: a model copy in a trial process (what `local` does; once per Ray worker process): load "
        f"{copy['load_s']:.1f} s, +{copy['mb']:.0f} MB resident ({path.name}, {path.stat().st_size / 2**20:.0f} MB file)"
    )
    port = free_port()
    server = xllamacpp.Server(params(2, 2, port))  # noqa: F841 (serves while this function runs)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {
        "model": "smollm2",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": report}],
        "max_tokens": 40,
        "temperature": 0,
        "cache_prompt": True,
    }

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

        def client() -> None:
            for _ in range(requests_per_client):
                ask()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rates[clients] = clients * requests_per_client / wall
        print(
            f"endpoint: one llama.cpp server (2 slots, 2 threads), {clients} client(s) x {requests_per_client} "
            f"requests ({usage['prompt_tokens']} prompt tokens, 40 out): {rates[clients]:.2f} requests/s, "
            f"{wall / (clients * requests_per_client):.2f} s each on average"
        )
    print(f"endpoint: 2 clients / 1 client throughput ratio {rates[2] / rates[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=150)
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
    folder = Path(tempfile.mkdtemp(prefix="sweep_scaling_"))
    os.chdir(folder)  # .mimic/ (graph state, Ray results) goes here, not into the repository
    (folder / "decisions.yaml").write_text(yaml.safe_dump(SCRIPT))
    spec = SweepSpec(
        name="scaling",
        task="digits",
        regime=args.regime,
        epochs=args.epochs,
        seeds=[0, 1],
        arms=[
            ArmSpec(name="rules", controller="rules"),
            ArmSpec(name="scripted", controller="scripted:decisions.yaml"),
        ],
    )
    print(
        f"sweep: digits regime {args.regime}, {args.epochs} epochs, arms rules + scripted x seeds 0,1 = 4 trials; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load {os.getloadavg()[0]:.2f}"
    )
    seq = sequential(spec, folder, threads=2)
    print(f"sequential, 1 process, 2 torch threads per trial: {seq:.1f} s ({seq / 4:.1f} s per trial)")
    ray_wall, ray_start = on_ray(spec, folder, workers=2)
    print(
        f"Ray, 2 workers x 1 thread: {ray_wall:.1f} s including {ray_start:.1f} s to start Ray "
        f"(trials, worker start-up and shutdown: {ray_wall - ray_start:.1f} s); half the sequential time would be "
        f"{seq / 2:.1f} s, so Ray's overhead here is {ray_wall - seq / 2:.1f} s"
    )
    seq_acc, ray_acc = test_accuracies(folder / "sequential.db"), test_accuracies(folder / "ray.db")
    diff = max(abs(seq_acc[k] - ray_acc[k]) for k in seq_acc)
    print(
        f"cells finished: sequential {len(seq_acc)}, Ray {len(ray_acc)}; max |test acc difference| {diff:.4f} "
        "(the same cells with 1 vs 2 torch threads)"
    )
    print(f"load at the end {os.getloadavg()[0]:.2f}; stores and Ray results in {folder}")
    print(f"speedup {seq / ray_wall:.2f}")


if __name__ == "__main__":
    main()
