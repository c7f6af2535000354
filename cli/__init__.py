"""The ``mimic-learn`` command line. ``mimic-learn --help`` lists the commands; each has its own ``--help``.

One module per command group; each parses its options, calls the package and prints:

* ``train``: ``train`` (a baseline arm), ``run`` (the agent decides at every epoch boundary);
* ``runs``: ``note``, ``resume``, ``clean`` (runs already in the MLflow store; the rules are ``tracking.runs``);
* ``reproduce``: ``reproduce`` (the published tables), ``sweep`` (Ray Tune);
* ``tune``: ``tune-static`` (the tuned static baseline's Optuna tuning, for reproduce's ``tuned_static`` arm);
* ``controllers``: ``eval-controller``, ``train-controller``, ``tools``, ``build-bank``;
* ``store``: ``ui``, ``export-decisions``, ``export-outcomes``;
* ``models``: ``models list|install``, ``serve-model``;
* ``options`` (the shared option types), ``output`` (the console, progress bars, ``fail``).
"""

from __future__ import annotations

import typer

from . import controllers, models, reproduce, runs, store, train, tune
from .output import CellProgress

app = typer.Typer(
    help="MIMIC-Learn: an LLM agent steers a PyTorch training run at every epoch boundary, through typed "
    "tools, with every step tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: it wraps every column to the terminal, so --help reads well on 80 columns (rich's
    # boxed tables squeezed the descriptions into a narrow column there).
    rich_markup_mode=None,
    epilog="Each command has --help. Documentation: docs/ in the repository (mkdocs serve).",
)

# The commands, in the order `mimic-learn --help` lists them.
app.command(short_help="Train without an agent (a baseline arm).")(train.train)
app.command(short_help="Train with the agent deciding at each epoch boundary.")(train.run)
app.command(short_help="Give a running run a note its next decision reads once.")(runs.note)
app.command(short_help="Continue a killed run from its last completed epoch.")(runs.resume)
app.command(short_help="Remove checkpoint folders that nothing can resume.")(runs.clean)
app.command(short_help="Reproduce the paper or the blog experiment (resumable).")(reproduce.reproduce)
app.command(short_help="Run a spec's arms x regimes x seeds as Ray Tune trials.")(reproduce.sweep)
app.command("tune-static", short_help="Tune the static baseline per regime (Optuna TPE, on validation).")(
    tune.tune_static
)
app.command("eval-controller", short_help="Score controllers on a bank of training situations.")(
    controllers.eval_controller
)
app.command("train-controller", short_help="Fine-tune the local controller (LoRA adapter, GGUF).")(
    controllers.train_controller_command
)
app.command("tools", short_help="List the registered tools and their argument schemas.")(
    controllers.list_tools
)
app.command(short_help="Start the MLflow UI on 127.0.0.1.")(store.ui)
app.command("export-decisions", short_help="Write a run's decisions as a scripted controller file.")(
    store.export_decisions
)
app.command("build-bank", short_help="Build the outcome bank (resumable; Ray optional).")(
    controllers.build_bank_cmd
)
app.command("export-outcomes", short_help="Write runs' outcome records (forks, oracle) as JSONL.")(
    store.export_outcomes
)
app.add_typer(models.models_app, name="models")
app.command("serve-model", short_help="Serve a GGUF chat model over the OpenAI API on 127.0.0.1.")(
    models.serve_model
)

__all__ = ["CellProgress", "app"]
