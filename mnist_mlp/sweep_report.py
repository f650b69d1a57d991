"""What a sweep reports: trials.csv, best.yaml, summary.md, its plots and its console lines.

Reads the trial folders that sweep.py's runs leave; ranks on validation figures only (test figures are
shown, never used to choose).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, TextIO

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mnist_mlp.config import config_yaml
from mnist_mlp.history import EPOCH, accuracy_column, loss_column
from mnist_mlp.plots import new_figure, save_figure
from mnist_mlp.progress import plural
from mnist_mlp.rundir import RunDir, atomic_write
from mnist_mlp.sweep_file import Sweep, Trial

TOP_CURVES = 5  # trials in the learning-curves plot
DONE = ("finished", "converged", "diverged")  # a trial folder with one of these statuses is not run again
# The metrics file names a split's figures as history.csv does.
VAL_ACCURACY, VAL_LOSS, TEST_ACCURACY = (
    accuracy_column("validation"),
    loss_column("validation"),
    accuracy_column("test"),
)
METRIC_COLUMNS = (
    *(column(split) for split in ("validation", "test", "train") for column in (accuracy_column, loss_column)),
    "epochs",
    "best_epoch",
)


def trial_dir(out: Path, trial: Trial) -> Path:
    """The run folder of one trial inside the sweep folder."""
    return out / "trials" / trial.id


def trial_row(trial: Trial, run_dir: Path) -> dict:
    """A trials.csv row: id, swept values, status, validation/test/train figures, epochs and time."""
    metrics = RunDir(run_dir).read_metrics()
    row = {"trial": trial.id, **trial.values, "status": metrics["status"]}
    row |= {name: metrics.get(name) for name in METRIC_COLUMNS}
    row["train_seconds"] = metrics.get("seconds_total")
    return row


def usable(row: dict) -> bool:
    """A trial that trained without diverging and has validation figures can be chosen."""
    return row["status"] != "diverged" and row[VAL_ACCURACY] is not None


def ranked(rows: list[dict]) -> list[dict]:
    """Best first: usable trials by validation accuracy, then validation loss, then fewer epochs."""

    def order(row: dict) -> tuple:
        if not usable(row):
            return (1, 0.0, 0.0, 0)
        return (0, -row[VAL_ACCURACY], row[VAL_LOSS], row["epochs"])

    return sorted(rows, key=order)  # stable: ties keep the sweep's order


def write_outputs(sweep: Sweep, out: Path, rows: list[dict]) -> None:
    """trials.csv, best.yaml (when a trial can be chosen), summary.md and the plots; with two or more swept
    keys also the curves of the best trial for each value of the first (learning_curves_by_<key>.png)."""
    write_trials_csv(out / "trials.csv", rows, sweep.keys)
    best = ranked(rows)
    by_id = {t.id: t for t in sweep.trials}
    if usable(best[0]):
        write_best_config(out / "best.yaml", by_id[best[0]["trial"]], best[0], sweep)
    (out / "plots").mkdir(exist_ok=True)
    plot_accuracy_against_rate([(by_id[row["trial"]], row) for row in rows], out / "plots" / "accuracy_vs_rate.png")
    top = [row for row in best if usable(row)][:TOP_CURVES]

    def curves(chosen: list[dict]) -> list[tuple[dict, list[dict]]]:
        return [(row, RunDir(trial_dir(out, by_id[row["trial"]])).read_history()) for row in chosen]

    plot_learning_curves(curves(top), sweep.keys, out / "plots" / "learning_curves.png")
    if len(sweep.keys) > 1:  # e.g. optimizer × learning rate: each optimizer at its best rate
        key = sweep.keys[0]
        title = f"Learning curves of the best trial for each {_short(key)}"
        plot_learning_curves(curves(best_per_value(rows, key)), sweep.keys, out / "plots" / _by_value_plot(key), title)
    atomic_write(out / "summary.md", summary_markdown(sweep, rows))


def best_per_value(rows: list[dict], key: str) -> list[dict]:
    """The best usable trial for each value of `key`, best first (values as JSON, so lists work)."""
    chosen = {}
    for row in ranked(rows):
        if usable(row):
            chosen.setdefault(json.dumps(row[key]), row)
    return list(chosen.values())


def _by_value_plot(key: str) -> str:
    return f"learning_curves_by_{_short(key)}.png"


def write_trials_csv(path: Path, rows: list[dict], keys: list[str]) -> None:
    """One row per trial in the sweep's order, with its rank (blank for diverged trials)."""
    rank = {row["trial"]: n for n, row in enumerate((r for r in ranked(rows) if usable(r)), start=1)}
    columns = ["trial", "rank", *keys, "status", *METRIC_COLUMNS, "train_seconds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {**row, "rank": rank.get(row["trial"])}
        writer.writerow({k: "" if cells[k] is None else _csv_cell(cells[k]) for k in columns})
    atomic_write(path, buffer.getvalue())


def _csv_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def write_best_config(path: Path, trial: Trial, row: dict, sweep: Sweep) -> None:
    """The chosen trial's complete config, loadable with --config; a comment says how it was chosen."""
    header = (
        f"# Chosen by `mnist-mlp sweep {sweep.path}`: trial {trial.id}, the best of {len(sweep.trials)} on\n"
        f"# validation accuracy ({row[VAL_ACCURACY]:.2%}, loss {row[VAL_LOSS]:.4f}, on the last "
        f"{trial.config.data.validation_size} training images)\n"
        f"# after {plural(row['epochs'], 'epoch')}. "
        f"Its test accuracy, {row[TEST_ACCURACY]:.2%}, was recorded, not used.\n"
    )
    atomic_write(path, header + config_yaml(trial.config))


def summary_markdown(sweep: Sweep, rows: list[dict]) -> str:
    """A ranked table of every trial, with what was fixed and how the best was chosen."""
    counts = {status: sum(row["status"] == status for row in rows) for status in DONE}
    lines = [
        f"# Sweep {sweep.path}",
        "",
        f"{len(rows)} trials: {counts['converged']} converged (patience), {counts['finished']} ran all epochs, "
        f"{counts['diverged']} diverged. Ranked by final validation accuracy on the last "
        f"{sweep.base.data.validation_size} training images (then validation loss, then fewer epochs); "
        "the test figures are reported, never used to choose. Best epoch: the one with the lowest validation loss.",
        "",
        *[f"- {note}" for note in sweep.notes],
        f"- fixed: {_fixed_settings(sweep)}",
        "",
        "| rank | trial | " + " | ".join(_short(k) for k in sweep.keys) + " | status | epochs | best epoch "
        "| val acc | val loss | test acc | train s |",
        "|---:|---|" + "---|" * len(sweep.keys) + "---|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(ranked(rows), start=1):
        cells = [str(rank) if usable(row) else "–", f"`{row['trial']}`", *(_show(row[k]) for k in sweep.keys)]
        cells += [row["status"], _show(row["epochs"]), _show(row["best_epoch"]), _percent(row[VAL_ACCURACY])]
        cells += [_show(row[VAL_LOSS], ".4f"), _percent(row[TEST_ACCURACY])]
        cells.append(_show(row["train_seconds"], ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![validation accuracy against learning rate](plots/accuracy_vs_rate.png)", ""]
    lines += ["![learning curves of the best trials](plots/learning_curves.png)", ""]
    if len(sweep.keys) > 1:
        lines += [f"![the best trial for each {_short(sweep.keys[0])}](plots/{_by_value_plot(sweep.keys[0])})", ""]
    return "\n".join(lines)


def _fixed_settings(sweep: Sweep) -> str:
    """The base config's training settings that no trial varies, in one line."""
    train = {f"train.{k}": v for k, v in sweep.base.to_dict()["train"].items()}
    model = {f"model.{k}": v for k, v in sweep.base.to_dict()["model"].items()}
    fixed = {"seed": sweep.base.seed, **model, **train}
    return ", ".join(f"{k}={'null' if v is None else _show(v)}" for k, v in fixed.items() if k not in sweep.keys)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _show(value: Any, spec: str = "g") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


# ---------------------------------------------------------------------------------------------------
# Plots


def plot_accuracy_against_rate(pairs: list[tuple[Trial, dict]], path: Path) -> None:
    """Validation accuracy against learning rate, one series per L1 rate, a line through the best per rate."""
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    groups: dict[float, list[tuple[Trial, dict]]] = {}
    for trial, row in pairs:
        groups.setdefault(trial.config.train.l1, []).append((trial, row))
    for l1, members in sorted(groups.items()):
        ok = [(t.config.train.learning_rate, r[VAL_ACCURACY] * 100) for t, r in members if usable(r)]
        best: dict[float, float] = {}
        for rate, accuracy in ok:
            best[rate] = max(accuracy, best.get(rate, -1.0))
        rates = sorted(best)
        (line,) = ax.plot(rates, [best[rate] for rate in rates], label=f"λ = {l1:g}")
        ax.scatter([r for r, _ in ok], [a for _, a in ok], color=line.get_color(), s=14, alpha=0.6)
        failed = [t.config.train.learning_rate for t, r in members if not usable(r)]
        # Diverged trials sit on the bottom edge: they have no accuracy worth plotting.
        ax.scatter(failed, [0.02] * len(failed), transform=ax.get_xaxis_transform(), marker="x", color=line.get_color())
    if not all(usable(row) for _, row in pairs):
        ax.scatter([], [], marker="x", color="gray", label="diverged")
    rates = [trial.config.train.learning_rate for trial, _ in pairs]
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 1.5, max(rates) * 1.5)  # diverged markers do not widen the data limits
    # Plain-number ticks: every decade over a wide range, 1-2-5 steps over a narrow one.
    subs = (1.0,) if max(rates) / min(rates) > 100 else (1.0, 2.0, 5.0)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate α (initial)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy against learning rate (line: best per rate)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_learning_curves(curves: list[tuple[dict, list[dict]]], keys: list[str], path: Path, title: str = "") -> None:
    """Validation loss and accuracy per epoch of the given trials (default title: the best ones)."""
    fig = new_figure(10, 4.2)
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for row, history in curves:
        epochs = [h[EPOCH] for h in history]
        label = f"{row['trial'][:6]} " + " ".join(f"{_short(k)}={_show(row[k])}" for k in keys)
        loss_ax.plot(epochs, [h[VAL_LOSS] for h in history], marker=".", label=label)
        accuracy_ax.plot(epochs, [h[VAL_ACCURACY] * 100 for h in history], marker=".", label=label)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("validation loss")
    accuracy_ax.set_ylabel("validation accuracy (%)")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    if curves:
        accuracy_ax.legend(fontsize="x-small")
    else:
        accuracy_ax.text(0.5, 0.5, "no trial trained without diverging", ha="center", transform=accuracy_ax.transAxes)
    fig.suptitle(title or f"Learning curves of the best {len(curves)} trials")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------
# Console


def say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def header(sweep: Sweep, out: Path, pending: int, workers: int, threads: int) -> str:
    done = len(sweep.trials) - pending
    lines = [
        f"sweep {sweep.path}: {len(sweep.trials)} trials over {', '.join(sweep.keys)}; "
        f"{done} already done, {pending} to run in {workers} worker(s) x {threads} thread(s); output: {out}"
    ]
    return "\n".join(lines + [f"  {note}" for note in sweep.notes])


def _describe(row: dict, keys: list[str]) -> str:
    return " ".join(f"{_short(k)}={_show(row[k])}" for k in keys)


def _figures(row: dict) -> str:
    if not usable(row):
        return f"diverged after {plural(row['epochs'] or 0, 'epoch')}"
    return (
        f"val {row[VAL_ACCURACY]:.2%} (loss {row[VAL_LOSS]:.4f})  "
        f"test {row[TEST_ACCURACY]:.2%}  {plural(row['epochs'], 'epoch')}, {row['status']}"
    )


def progress_line(count: int, total: int, row: dict, best: dict, keys: list[str]) -> str:
    seconds = f"  {row['train_seconds']:.1f} s" if row["train_seconds"] is not None else ""
    lead = f"[{count}/{total}] {row['trial']} {_describe(row, keys)}: {_figures(row)}{seconds}"
    if not usable(best):
        return f"{lead}  | best: none yet"
    return f"{lead}  | best: {best['trial']} val {best[VAL_ACCURACY]:.2%}"


def closing_line(best: dict, out: Path) -> str:
    return (
        f"best: {best['trial']} ({best[VAL_ACCURACY]:.2%} validation, {best[TEST_ACCURACY]:.2%} test, "
        f"{plural(best['epochs'], 'epoch')}); config: {out / 'best.yaml'}, table: {out / 'summary.md'}"
    )
