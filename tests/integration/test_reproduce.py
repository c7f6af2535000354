"""`mimic-learn reproduce` end to end on tiny data: every arm runs, the report has its structure, resumable."""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from typer.testing import CliRunner

from mimic_learn.cli import app
from mimic_learn.experiments import BLOG_ARMS, PAPER_ARMS, Arm, arm_row_cells, paired_diff


def test_paired_difference_and_interval():
    diff, half, n = paired_diff({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.85, 1: 0.8, 2: 0.8, 3: 0.1})
    assert n == 3 and abs(diff - 0.1 / 3) < 1e-12
    assert abs(half - 4.302653 * 0.028867513459481287 / 3**0.5) < 1e-7  # t(0.975, 2) * sd / sqrt(n)
    # beyond 10 seeds the t quantile still applies (t(0.975, 14) = 2.145, not the normal 1.96)
    arm = {s: 0.01 * (s % 3) for s in range(15)}
    diff, half, n = paired_diff(arm, dict.fromkeys(range(15), 0.0))
    sd = statistics.stdev(arm.values())
    assert n == 15 and abs(half - 2.144787 * sd / 15**0.5) < 1e-7


def _seed(test: float, calls=0.0, accepted=0.0, fallbacks=0.0, knobs=()) -> dict:
    return {"test": test, "calls": calls, "accepted": accepted, "fallbacks": fallbacks, "knobs": list(knobs)}


def test_arm_row_cells_show_the_paired_delta_tool_use_and_knobs():
    base = {0: 0.80, 1: 0.90, 2: 0.85}
    agent = Arm("llm", "LLM")
    seeds = {0: _seed(0.82, 3, 2, 1, ["lr"]), 1: _seed(0.91, 2, 2, 0, ["dropout"]), 2: _seed(0.86, 1, 0)}
    cells = arm_row_cells(agent, seeds, base, "baseline")
    diff, half, n = paired_diff({s: c["test"] for s, c in seeds.items()}, base)
    assert cells["delta"] == f"{diff:+.4f} ± {half:.4f} (n=3)" and cells["delta"].startswith("+0.0133")
    assert cells["tool_use"] == "6 (4)" and cells["fallbacks"] == "1" and cells["knobs"] == "dropout, lr"
    # In percentage points (the blog's table), one shared seed: no interval.
    one = arm_row_cells(agent, {1: _seed(0.95)}, base, "baseline", scale=100.0)
    assert one["delta"] == "+5.00 n/a (n=1)" and one["knobs"] == "none" and one["tool_use"] == "0 (0)"
    # The reference arm, an arm with no seed in common, and an arm without a controller.
    assert arm_row_cells(Arm("baseline", None), {0: _seed(0.8)}, base, "baseline")["delta"] == "(baseline)"
    assert arm_row_cells(agent, {7: _seed(0.8)}, base, "baseline")["delta"] == "—"
    classical = arm_row_cells(
        Arm("plateau", None), {0: _seed(0.81, knobs=["lr"])}, base, "baseline", reference="x"
    )
    assert classical["tool_use"] == "—" and classical["fallbacks"] == "—" and classical["knobs"] == "lr"


def test_paper_reproduction_on_digits_runs_every_arm_and_resumes(workdir, run_reproduce):
    args = [
        "paper",
        "--task",
        "digits",
        "--regimes",
        "100",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--controller",
        "rules",
    ]
    out = run_reproduce(*args, "--tracking-uri", f"sqlite:///{workdir / 'm.db'}")
    assert out.count("done paper/100/") == len(PAPER_ARMS) * 2
    report = (workdir / "docs/results/paper.md").read_text()
    assert report.startswith("# Paper experiment, reproduced")
    assert (
        "Command: `mimic-learn reproduce paper" in report and "Wall time" in report and "Hardware" in report
    )
    assert "**test** set" in report and "copy error" in report  # the paper's own problems are noted
    table = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [row.split(" | ")[0].strip("| ") for row in table] == [a.name for a in PAPER_ARMS]
    assert all(row.split(" | ")[1] == "2" for row in table)  # 2 seeds per arm
    assert "0.6654 / 0.6713 / 0.9200" in report  # the paper's published baseline row beside ours
    assert (workdir / "docs/results/paper/plots_100/val_acc.png").exists()
    # The per-cell file written beside the report rebuilds the same table without the store.
    run_reproduce("paper", "--from-cells", "docs/results/paper_cells.csv", "--out", "again.md")
    rebuilt = (workdir / "again.md").read_text()
    assert [line for line in rebuilt.splitlines() if line.startswith("| ")] == [
        line for line in report.splitlines() if line.startswith("| ")
    ]
    # Second sitting: nothing reruns, the report is rebuilt from the store.
    again = run_reproduce(*args, "--tracking-uri", f"sqlite:///{workdir / 'm.db'}")
    assert "done paper/" not in again and again.count("skip paper/100/") == len(PAPER_ARMS) * 2
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'm.db'}")
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`mimic.role` = 'parent'")
    assert len(parents) == 2
    client = mlflow.MlflowClient()
    assert any(a.path == "report" for a in client.list_artifacts(parents.run_id.iloc[0]))


@pytest.mark.slow
def test_blog_reproduction_on_synthetic_data_runs_every_arm(workdir, run_reproduce):
    out = run_reproduce(
        "blog", "--task", "synthetic", "--regimes", "64", "--seeds", "0", "--epochs", "2", "--controller", "rules",
        "--tracking-uri", f"sqlite:///{workdir / 'm.db'}", "--threads", "2",
    )  # fmt: skip
    assert out.count("done blog/64/") == len(BLOG_ARMS)
    report = (workdir / "docs/results/blog.md").read_text()
    assert "PROXY" in report and "88.57" in report and "79.95" in report
    table = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [row.split(" | ")[0].strip("| ") for row in table] == [a.name for a in BLOG_ARMS]


def test_model_and_val_size_overrides_reach_every_cell_and_the_proxy_note(workdir, run_reproduce):
    out = run_reproduce(
        "blog", "--task", "synthetic", "--model", "resnet18", "--val-size", "40", "--regimes", "32",
        "--seeds", "0", "--epochs", "1", "--arms", "steplr,onecycle", "--controller", "rules",
        "--tracking-uri", f"sqlite:///{workdir / 'm.db'}", "--threads", "2",
    )  # fmt: skip
    assert out.count("done blog/32/") == 2
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'm.db'}")
    children = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`mimic.role` = 'child'", output_format="list"
    )
    assert len(children) == 2
    assert all(r.data.params["model"] == "resnet18" and r.data.params["val_size"] == "40" for r in children)
    report = (workdir / "docs/results/blog.md").read_text()
    assert "ResNet-18 (ImageNet stem: torchvision's resnet18)" in report


def test_blog_without_cifar_says_what_to_do(workdir):
    result = CliRunner().invoke(
        app,
        [
            "reproduce",
            "blog",
            "--data-dir",
            str(workdir / "nothing"),
            "--tracking-uri",
            f"sqlite:///{workdir / 'm.db'}",
        ],
    )
    assert result.exit_code == 2
    assert "mnist32" in result.output and "--data-dir" in result.output


# ------------------------------------------------------------------------------ the per-cell file (fixture)
def _fixture_cells(path, seeds=range(10)):
    """A SYNTHETIC per-cell file (made-up numbers, a test fixture, not results): regime 100, baseline and
    three arms; reduce_on_plateau has no finished cell (its runs failed), llm_paper_memory is absent."""
    import csv

    from mimic_learn.experiments import CELL_FIELDS

    base = {s: 0.80 + 0.01 * (s % 3) for s in seeds}
    jitter = [0.001, -0.001, 0.0005, -0.0005, 0.0, 0.001, -0.001, 0.0002, -0.0002, 0.0]
    arms = {
        "baseline": base,
        "llm_paper_log_only": {s: base[s] + 0.03 + jitter[s] for s in seeds},  # clearly better
        "rules": {s: base[s] + jitter[s] for s in seeds},  # equivalent within ±1 pt
        "llm_paper_revert": {s: base[s] + (0.05 if s % 2 else -0.05) for s in seeds},  # inconclusive
    }
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CELL_FIELDS)
        writer.writeheader()
        for arm, tests in arms.items():
            for s, test in tests.items():
                writer.writerow(
                    {"experiment": "paper", "regime": "100", "arm": arm, "seed": s, "status": "finished",
                     "final_val": test - 0.005, "best_val": test, "test": test, "train": 1.0, "epochs": 30,
                     "decisions": 0 if arm == "baseline" else 29, "tool_calls": 0 if arm == "baseline" else 29,
                     "accepted": 0 if arm == "baseline" else 29, "fallbacks": 0, "knobs": "" if arm == "baseline" else "lr",
                     "tokens_in": 0, "tokens_out": 0, "wall_s": 60, "ran_on": "cpu on fixture", "run_id": "", "note": ""}
                )  # fmt: skip
        for s in seeds:
            writer.writerow(
                {"experiment": "paper", "regime": "100", "arm": "reduce_on_plateau", "seed": s,
                 "status": "not run", "note": "failed: RuntimeError: boom"}
            )  # fmt: skip
    return arms


def test_report_built_from_the_cells_file_alone(tmp_path, monkeypatch, run_reproduce):
    monkeypatch.chdir(tmp_path)
    arms = _fixture_cells(tmp_path / "paper_cells.csv")
    out = run_reproduce("paper", "--from-cells", "paper_cells.csv", "--out", "r.md")
    assert "r.md" in out and not (tmp_path / "mlflow.db").exists()  # no store touched
    report = (tmp_path / "r.md").read_text()
    assert "## Regime 100 (30 epochs)" in report and "paper_cells.csv" in report
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")
        for line in report.splitlines()
        if line.startswith("| ") and not line.startswith("| arm")
    }
    assert list(rows) == [a.name for a in PAPER_ARMS]  # every published arm, in order, even those not run
    assert rows["baseline"][1] == "10" and rows["rules"][1] == "10"
    verdict = {
        name: cols[9] for name, cols in rows.items()
    }  # arm, seeds, final, best, test, train, per-seed, Δ, p, verdict
    assert verdict["llm_paper_log_only"] == "better"
    assert verdict["rules"] == "equivalent within ±1 pt"
    assert verdict["llm_paper_revert"] == "inconclusive"
    assert (
        rows["reduce_on_plateau"][1] == "0"
        and rows["reduce_on_plateau"][2] == "not run (failed: RuntimeError: boom)"
    )
    assert rows["llm_paper_memory"][2] == "not run (not in paper_cells.csv)"
    # a reason that already says "not run: ..." is not wrapped twice
    cells = tmp_path / "paper_cells.csv"
    baseline_s0 = next(
        line for line in cells.read_text().splitlines() if line.startswith("paper,100,baseline,0,")
    )
    with cells.open("a") as fh:
        fh.write(baseline_s0.replace(",100,", ",10,", 1) + "\n")
        fh.write("paper,10,llm_paper_memory,0,not run" + "," * 16 + ",not run: CPU time\n")
    run_reproduce("paper", "--from-cells", "paper_cells.csv", "--out", "r10.md")
    regime_10 = (tmp_path / "r10.md").read_text().split("## Regime 10 ")[1].split("## ")[0]
    assert "| llm_paper_memory | 0 | not run (CPU time; not in paper_cells.csv) |" in regime_10  # seeds 1-9
    assert "| rules | 0 | not run (not in paper_cells.csv) |" in regime_10
    assert rows["llm_paper_log_only"][7].startswith("+0.03")  # Δ in accuracy, 4 decimals
    # per-seed values shown, mean ± SD labelled as SD
    assert f"{arms['rules'][0]:.4f}" in rows["rules"][6] and "mean ± SD" in report
    assert "absence of evidence" in report and "Smallest effect detectable" in report
    # --notes: how the cells were produced, under the header, on every rebuild; a missing file is refused
    (tmp_path / "notes.md").write_text("Cells came from two sittings on 2 cores.\n")
    run_reproduce("paper", "--from-cells", "paper_cells.csv", "--out", "n.md", "--notes", "notes.md")
    head = (tmp_path / "n.md").read_text().split("## Regime")[0]
    assert "Cells came from two sittings on 2 cores." in head
    bad = CliRunner().invoke(
        app,
        ["reproduce", "paper", "--from-cells", "paper_cells.csv", "--out", "m.md", "--notes", "absent.md"],
    )
    assert bad.exit_code != 0 and "--notes absent.md: no such file" in bad.output
    assert not (tmp_path / "m.md").exists()
    assert "Each seed draws its own training subset" in report
    # the missing cells: one line per arm and reason, its seeds as ranges
    assert "- `paper/100/reduce_on_plateau/s0–s9` (10 cells): failed: RuntimeError: boom\n" in report


def test_cells_file_round_trip(tmp_path):
    from mimic_learn.experiments import read_cells_csv, write_cells_csv

    data = {"10": {"baseline": {0: {"final_val": 0.5, "best_val": 0.6, "test": 0.55, "train": 1.0, "epochs": 30,
                                    "decisions": 0.0, "calls": 0.0, "accepted": 0.0, "fallbacks": 0.0,
                                    "knobs": ["lr", "dropout"], "tokens_in": 10.0, "tokens_out": 2.0,
                                    "seconds": 12.5, "ran_on": "cuda on gpu1", "run_id": "abc", "val_curve": [0.5]}}}}  # fmt: skip
    path = write_cells_csv("paper", data, {"paper/10/rules/s0": "failed: x\ntraceback"}, tmp_path / "c.csv")
    back, missing, regimes = read_cells_csv(path, "paper")
    cell = back["10"]["baseline"][0]
    assert regimes == ["10"] and missing == {"paper/10/rules/s0": "failed: x"}
    assert cell["test"] == 0.55 and cell["seconds"] == 12.5 and cell["knobs"] == ["lr", "dropout"]
    assert cell["ran_on"] == "cuda on gpu1" and cell["epochs"] == 30 and cell["calls"] == 0
    assert read_cells_csv(path, "blog") == ({}, {}, [])
    # counts (MLflow metrics, so floats in the store) are written and read as integers, whatever the source wrote
    row = path.read_text().splitlines()[1].split(",")
    assert row[10:14] == ["0", "0", "0", "0"] and row[15:17] == ["10", "2"]
    path.write_text(path.read_text().replace(",10,2,", ",10.0,2.0,"))
    again = read_cells_csv(path, "paper")[0]["10"]["baseline"][0]
    assert again["tokens_in"] == 10 and type(again["tokens_in"]) is int and type(again["decisions"]) is int


# ------------------------------------------------------------------------------ arms and the dry run's compute
def test_arms_bind_the_published_action_spaces_and_starts_rename_arms():
    from mimic_learn.agents.providers import ProviderOptions
    from mimic_learn.experiments import (
        BLOG_TOOLS,
        PAPER_TOOLS,
        arm_spec,
        at_start,
        paper_config,
        resolve_arms,
    )

    assert "set_weight_decay" not in PAPER_TOOLS and {"set_alpha", "propose_weight_delta"} <= set(PAPER_TOOLS)
    assert [a.tools for a in BLOG_ARMS if a.controller == "LLM"] == [BLOG_TOOLS] * 8
    assert all(a.tools == PAPER_TOOLS for a in PAPER_ARMS if a.controller == "LLM")
    oracle, cosine = resolve_arms("paper", ["oracle_end", "cosine"])[::-1]
    assert oracle.controller == "oracle:end" and cosine.train_overrides == {"schedule": "cosine"}
    train = paper_config("100", 0, "data", 2, 1)
    spec = arm_spec(oracle, train, "local", "s.sqlite", ProviderOptions())
    assert spec.controller == "oracle:end" and spec.agent.tools == list(PAPER_TOOLS)
    variants = at_start(resolve_arms("paper", ["baseline"]), ["published", "lr_x30", "dropout_0.7"])
    assert [a.name for a in variants] == ["baseline", "baseline@lr_x30", "baseline@dropout_0.7"]
    lr30 = arm_spec(variants[1], train, "local", "s.sqlite", ProviderOptions()).train
    assert lr30.lr == pytest.approx(0.03) and lr30.dropout == train.dropout
    assert arm_spec(variants[2], train, "local", "s", ProviderOptions()).train.dropout == 0.7
    with pytest.raises(ValueError, match="lr_x2"):
        at_start(variants, ["lr_x2"])


def test_dry_run_counts_oracle_rollouts_and_pbt_members_with_a_time_estimate():
    from mimic_learn.experiments import EPOCH_SECONDS, describe_plan, plan_reproduce

    plan = plan_reproduce(
        "paper", ["600"], [0, 1], ["baseline", "oracle_end", "oracle_1", "pbt"], "local", None
    )
    rows = {r.arm: r for r in plan.rows}
    # 8 candidates with the paper's tools: keep, lr x0.1/x0.3/x3/x10, dropout +-0.1, alpha + weight delta
    assert rows["oracle_end"].candidates == 8 and rows["oracle_end"].shadow_epochs == 8 * sum(range(1, 30))
    assert rows["oracle_1"].shadow_epochs == 8 * 29 and rows["oracle_1"].epoch_equivalents == (30 + 232) * 2
    assert rows["pbt"].epoch_equivalents == 30 * 4 * 2 and rows["baseline"].epoch_equivalents == 60
    assert rows["baseline"].seconds == pytest.approx(60 * EPOCH_SECONDS[("paper", "600")])
    assert plan.llm_decisions == 0  # oracles spend no tokens
    blog = plan_reproduce("blog", ["2000"], [0], ["oracle_1"], "local", 10)
    assert blog.rows[0].candidates == 5 and blog.rows[0].shadow_epochs == 5 * 9
    text = describe_plan(plan)
    assert "oracle_end" in text and "est. time" in text and "EPOCH_SECONDS" in text
    unknown = plan_reproduce("blog", ["full"], [0], ["steplr"], "local", None)
    assert unknown.rows[0].seconds is None and "no measured epoch time" in describe_plan(unknown)


def test_dry_run_time_is_calibrated_on_the_finished_training_only_cells_of_the_per_cell_file(tmp_path):
    """The estimate is what cells really took (median per epoch of no-controller cells); a regime with too few
    of them, and a run of other work (--epochs), fall back to EPOCH_SECONDS, and the printout says which."""
    import csv

    from mimic_learn.experiments import EPOCH_SECONDS, describe_plan, plan_reproduce

    cells = tmp_path / "paper_cells.csv"
    rows = [  # regime 600: per-epoch 2, 3 and 4 s (median 3); the controller's slow cell and a not-run row
        ("600", "baseline", "finished", "60", "30"), ("600", "cosine", "finished", "90", "30"),
        ("600", "baseline@lr_x30", "finished", "120", "30"), ("600", "llm_adapter", "finished", "9000", "30"),
        ("600", "baseline", "not run", "", ""),
        ("100", "baseline", "finished", "300", "30"), ("100", "baseline", "finished", "300", "30"),
    ]  # fmt: skip
    with cells.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["experiment", "regime", "arm", "seed", "status", "wall_s", "epochs"])
        out.writerows(["paper", r, a, i, st, w, e] for i, (r, a, st, w, e) in enumerate(rows))
    plan = plan_reproduce(
        "paper", ["600", "100"], [0, 1], ["baseline", "oracle_1"], "rules", None, cells_csv=cells
    )
    got = {(r.arm, r.regime): r.seconds for r in plan.rows}
    assert got[("baseline", "600")] == pytest.approx(3.0 * 60)
    assert got[("oracle_1", "600")] == pytest.approx(3.0 * (30 + 8 * 29) * 2)
    assert got[("baseline", "100")] == pytest.approx(EPOCH_SECONDS[("paper", "100")] * 60)  # 2 cells: too few
    text = describe_plan(plan)
    assert "600 3.00 s (3 cells)" in text and f"100 {EPOCH_SECONDS[('paper', '100')]:g} s" in text
    other = plan_reproduce("paper", ["600"], [0], ["baseline"], "rules", 10, cells_csv=cells)
    assert other.rows[0].seconds == pytest.approx(EPOCH_SECONDS[("paper", "600")] * 10)


def test_cosine_schedule_decays_to_zero_at_the_last_epoch():
    from mimic_learn.training import TrainConfig, Trainer

    trainer = Trainer.from_config(
        TrainConfig(task="digits", epochs=4, schedule="cosine", lr=0.01, regime="100", num_threads=1)
    )
    lrs = [trainer.run_epoch().lr for _ in range(4)]  # a report's lr is the one for the next epoch
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)], abs=1e-12)
    assert trainer.lr == pytest.approx(0.0, abs=1e-12)


def test_fixed_subset_gives_every_seed_the_same_training_subset():
    from mimic_learn.experiments import subset_policy
    from mimic_learn.training import TrainConfig, Trainer

    def train_indices(seed: int, data_seed: int | None) -> list[int]:
        cfg = TrainConfig(
            task="digits", epochs=1, regime="100", seed=seed, data_seed=data_seed, num_threads=1
        )
        return sorted(Trainer.from_config(cfg).data.train_indices.tolist())

    assert train_indices(1, None) != train_indices(2, None)  # default: each seed draws its own subset
    assert train_indices(1, 0) == train_indices(2, 0) == train_indices(0, None)
    assert subset_policy({"100": {"a": {1: {"data_seed": "None"}}}}).startswith("Each seed draws its own")
    assert "data seed(s) 0" in subset_policy({"100": {"a": {1: {"data_seed": "0"}}}})


def test_a_sitting_in_the_other_subset_mode_than_the_stores_cells_is_refused():
    from mimic_learn.experiments.reproduction import check_subset_mode

    def run(data_seed: str) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(params={"data_seed": data_seed}))

    per_seed, fixed = {"paper/100/baseline/s1": run("None")}, {"paper/100/baseline/s1": run("0")}
    check_subset_mode(per_seed, False, "paper")  # same mode: fine
    check_subset_mode(fixed, True, "paper")
    check_subset_mode({}, True, "paper")
    with pytest.raises(
        ValueError, match=r"1 finished cells .*paper/100/baseline/s1.* per-seed subsets.*-fixed"
    ):
        check_subset_mode(per_seed, True, "paper")
    with pytest.raises(ValueError, match=r"one fixed subset \(--fixed-subset\).*paper-per-seed"):
        check_subset_mode(fixed, False, "paper")


def test_report_shows_the_share_of_a_mis_tuned_gap_recovered_and_a_strip_plot(tmp_path):
    from mimic_learn.experiments import report_from_cells, write_cells_csv

    def cells(tests: dict[int, float]) -> dict:
        return {s: {"test": t, "final_val": t, "best_val": t, "train": 1.0, "epochs": 30, "seconds": 1.0}
                for s, t in tests.items()}  # fmt: skip

    # SYNTHETIC fixture: the lr x30 start costs the baseline 10 points; rules recovers 6 of them (0.60)
    data = {"100": {
        "baseline": cells({0: 0.80, 1: 0.82}),
        "rules": cells({0: 0.80, 1: 0.82}),
        "baseline@lr_x30": cells({0: 0.70, 1: 0.72}),
        "rules@lr_x30": cells({0: 0.76, 1: 0.78}),
    }}  # fmt: skip
    csv_path = write_cells_csv("paper", data, {}, tmp_path / "c.csv")
    out = report_from_cells("paper", csv_path, tmp_path / "r.md", "cmd", echo=lambda *a: None)
    report = out.read_text()
    assert (
        "- start `lr_x30`: gap 0.1000 (baseline − baseline@lr_x30); recovered: `rules@lr_x30` +0.60" in report
    )
    rows = [line.split(" | ")[0].strip("| ") for line in report.splitlines() if line.startswith("| ")][1:]
    assert rows[-2:] == ["baseline@lr_x30", "rules@lr_x30"]
    # a start's arms are compared with the same start's baseline, in a Holm family of their own
    row = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    assert "| (baseline of start lr_x30) | — | — |" in row["baseline@lr_x30"]
    assert "| +0.0600 [" in row["rules@lr_x30"]
    published_only = {"100": {k: v for k, v in data["100"].items() if "@" not in k}}
    alone = report_from_cells(
        "paper",
        write_cells_csv("paper", published_only, {}, tmp_path / "p.csv"),
        tmp_path / "p.md",
        "cmd",
        echo=lambda *a: None,
    ).read_text()
    rules_alone = next(line for line in alone.splitlines() if line.startswith("| rules |"))
    assert rules_alone.split(" | ")[7:10] == row["rules"].split(" | ")[7:10]  # Δ [CI], p, verdict unchanged
    assert (tmp_path / "r" / "strip_100.png").stat().st_size > 1000
    assert "![test accuracy per seed, regime 100](r/strip_100.png)" in report


# ------------------------------------------------------------------------------ byte-identical reports
GOLDEN = Path(__file__).parent.parent / "data" / "reports"


@pytest.mark.parametrize("kind, stem", [("paper", "paper"), ("blog", "blog"), ("paper", "paper_store")])
def test_a_committed_cells_file_rebuilds_its_report_byte_for_byte(tmp_path, monkeypatch, kind, stem):
    """tests/data/reports/<kind>_cells.csv holds SYNTHETIC numbers (a fixture, not results) that reach every
    part of a report: several regimes, a regime with no finished cell, failed and absent cells, optional arms,
    PBT, a mis-tuned start, one seed only, a seed not shared with the baseline, a fixed subset (blog). The report
    it builds must equal <kind>.md byte for byte, and reading then writing the file must give the same bytes:
    a committed report can be rebuilt without the MLflow store, before and after a refactoring. Regenerate
    both (with report_from_cells and write_cells_csv) only for an intended change of the report.
    paper_store_cells.csv is REAL: three cells (regime 10, seed 0) written by `reproduce --report-only` from an
    MLflow store, its report built by the code before the redesign (de5a9c5)."""
    from mimic_learn.experiments import read_cells_csv, report_from_cells, write_cells_csv

    monkeypatch.chdir(tmp_path)
    cells = Path(f"{stem}_cells.csv")
    shutil.copy(GOLDEN / cells.name, cells)
    command = f"mimic-learn reproduce {kind} --from-cells {cells}"
    report = report_from_cells(kind, cells, Path(f"{stem}.md"), command, echo=lambda *a: None)
    assert report.read_text() == (GOLDEN / f"{stem}.md").read_text()  # a readable diff when it fails
    assert report.read_bytes() == (GOLDEN / f"{stem}.md").read_bytes()
    data, missing, _ = read_cells_csv(cells, kind)
    again = write_cells_csv(kind, data, missing, tmp_path / "again.csv")
    if stem == "paper_store":
        # written before counts were integers (a mix of 0 and 29.0): the report is the same; rewritten, the
        # counts become integers and the file a fixed point
        data, missing, _ = read_cells_csv(again, kind)
        twice = write_cells_csv(kind, data, missing, tmp_path / "twice.csv")
        assert twice.read_bytes() == again.read_bytes()
        return
    assert again.read_bytes() == (GOLDEN / cells.name).read_bytes()


def test_reproduce_options_build_each_cells_training_config():
    from mimic_learn.experiments import ReproduceOptions
    from mimic_learn.experiments.reproduction import pending_cells, train_config

    paper = ReproduceOptions("paper", ["100"], [0, 1], task="digits", model="paper_cnn", val_size=40)
    assert paper.report_path == Path("docs/results/paper.md") and paper.task_name == "digits"
    train = train_config(paper, "100", 1)
    assert (train.task, train.model, train.val_size, train.epochs, train.seed) == (
        "digits",
        "paper_cnn",
        40,
        30,
        1,
    )
    assert train_config(replace(paper, fixed_subset=True), "100", 1).data_seed == 0
    blog = ReproduceOptions("blog", ["2000"], [0], epochs=3, out=Path("b.md"))
    assert blog.task_name == "cifar10" and blog.report_path == Path("b.md")
    assert train_config(blog, "2000", 0).epochs == 3 and train_config(blog, "2000", 0).optimizer == "sgd"
    # Finished cells are skipped unless forced; --report-only runs none; starts multiply the arms.
    done = {"paper/100/baseline/s0": SimpleNamespace(info=SimpleNamespace(run_id="abcdef123"))}
    arms = [a for a in PAPER_ARMS if a.name in ("baseline", "rules")]
    lines: list[str] = []
    pending, skipped = pending_cells(paper, arms, done, lines.append)
    assert [c.tag for c in pending] == ["paper/100/rules/s0", "paper/100/baseline/s1", "paper/100/rules/s1"]
    assert skipped == 1 and lines == ["skip paper/100/baseline/s0 (finished in run abcdef12)"]
    assert pending[0].spec.controller == "rules" and pending[0].spec.train.val_size == 40
    assert len(pending_cells(replace(paper, force=True), arms, done, print)[0]) == 4
    assert pending_cells(replace(paper, report_only=True), arms, done, print) == ([], 0)
