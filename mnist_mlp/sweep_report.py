"""What a sweep reports: trials.csv, best.yaml, summary.md, its plots and its console lines.

Built from the study's rows (study.py: each trial's values, status, figures, config and validation curve), so
it can be written anywhere the study can be read; ranks on validation figures only (test figures are shown,
never used to choose).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, TextIO

import optuna
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mnist_mlp.config import dump_yaml
from mnist_mlp.history import accuracy_column, loss_column
from mnist_mlp.plots import new_figure, save_figure
from mnist_mlp.progress import plural
from mnist_mlp.rundir import atomic_write
from mnist_mlp.study import failures, rows, study_info
from mnist_mlp.sweep_file import Sweep

TOP_CURVES = 5  # trials in the learning-curves plot
UNCHOSEN = ("diverged", "pruned", "running")  # statuses of trials that cannot be chosen
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


def report(study: optuna.Study, out: Path, stream: TextIO) -> list[dict]:
    """Write the report of the study's trials into `out` and say which is best; the rows, best first."""
    found = rows(study)
    write_report(study_info(study), found, *failures(study), Path(out))
    best = ranked(found)
    say(stream, closing_line(best[0], out) if best and usable(best[0]) else "no trial trained without diverging")
    return best


def usable(row: dict) -> bool:
    """A trial that trained to its end without diverging, with validation figures, can be chosen."""
    return row["status"] not in UNCHOSEN and row.get(VAL_ACCURACY) is not None


def ranked(rows: list[dict]) -> list[dict]:
    """Best first: usable trials by validation accuracy, then validation loss, then fewer epochs."""

    def order(row: dict) -> tuple:
        if not usable(row):
            return (1, 0.0, 0.0, 0)
        return (0, -row[VAL_ACCURACY], row[VAL_LOSS], row["epochs"])

    return sorted(rows, key=order)  # stable: ties keep the sweep's order


def write_report(info: dict, rows: list[dict], retried: int, duplicates: int, out: Path) -> None:
    """trials.csv, best.yaml (when a trial can be chosen), summary.md and the plots into `out`; with two or more
    swept keys also the curves of the best trial for each value of the first (learning_curves_by_<key>.png)."""
    keys = info["keys"]
    out.mkdir(parents=True, exist_ok=True)
    write_trials_csv(out / "trials.csv", rows, keys)
    best = ranked(rows)
    if best and usable(best[0]):
        write_best_config(out / "best.yaml", best[0], info, len(rows))
    (out / "plots").mkdir(exist_ok=True)
    plot_accuracy_against_rate(rows, out / "plots" / "accuracy_vs_rate.png")
    plot_learning_curves([row for row in best if usable(row)][:TOP_CURVES], keys, out / "plots" / "learning_curves.png")
    if len(keys) > 1:  # e.g. optimizer × learning rate: each optimizer at its best rate
        title = f"Learning curves of the best trial for each {_short(keys[0])}"
        plot_learning_curves(best_per_value(rows, keys[0]), keys, out / "plots" / _by_value_plot(keys[0]), title)
    atomic_write(out / "summary.md", summary_markdown(info, rows, retried, duplicates))


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
    """One row per trial in the sweep's order, with its rank (blank for trials that cannot be chosen), its
    study trial number, and the machine and folder it trained in."""
    rank = {row["trial"]: n for n, row in enumerate((r for r in ranked(rows) if usable(r)), start=1)}
    columns = ["trial", "rank", *keys, "status", *METRIC_COLUMNS, "train_seconds", "number", "host", "folder"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        cells = {**row, "rank": rank.get(row["trial"])}
        writer.writerow({k: "" if cells.get(k) is None else _csv_cell(cells[k]) for k in columns})
    atomic_write(path, buffer.getvalue())


def _csv_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def write_best_config(path: Path, row: dict, info: dict, trials: int) -> None:
    """The chosen trial's complete config, loadable with --config; a comment says how it was chosen."""
    header = (
        f"# Chosen by `mnist-mlp sweep {info['file']}` (study {info['study']}): trial {row['trial']}, the best of "
        f"{trials} on\n# validation accuracy ({row[VAL_ACCURACY]:.2%}, loss {row[VAL_LOSS]:.4f}, on the last "
        f"{row['config']['data']['validation_size']} training images)\n# after {plural(row['epochs'], 'epoch')}. "
        f"Its test accuracy, {row[TEST_ACCURACY]:.2%}, was recorded, not used.\n"
    )
    atomic_write(path, header + dump_yaml(row["config"]))  # as config.yaml is written: 1e-5 stays a number


def epochs_saved(rows: list[dict]) -> tuple[int, int, int]:
    """(epochs trained in all, epochs the pruned trials trained, epochs pruning left out: what the pruned
    trials would still have trained up to their train.epochs)."""
    trained = sum(row.get("epochs") or 0 for row in rows)
    pruned = [row for row in rows if row["status"] == "pruned"]
    ran = sum(row.get("epochs") or 0 for row in pruned)
    return trained, ran, sum(row["config"]["train"]["epochs"] for row in pruned) - ran


def summary_markdown(info: dict, rows: list[dict], retried: int = 0, duplicates: int = 0) -> str:
    """A ranked table of every trial, with what was fixed, how the best was chosen and what pruning saved."""
    keys = info["keys"]
    statuses = ("converged", "finished", "pruned", "diverged", "running")
    count = {status: sum(row["status"] == status for row in rows) for status in statuses}
    trained, _, saved = epochs_saved(rows)
    validation = info["base"]["data"]["validation_size"]
    lines = [
        f"# Sweep {info['file']}",
        "",
        f"{len(rows)} of {info['budget']} trials ({info['sampler']} sampler, pruner {info['pruner']}, study "
        f"{info['study']}): {count['converged']} converged (patience), {count['finished']} ran all epochs, "
        f"{count['pruned']} pruned, {count['diverged']} diverged"
        + (f", {count['running']} still running" if count["running"] else "")
        + f". Ranked by final validation accuracy on the last {validation} training images (then validation "
        "loss, then fewer epochs); the test figures are reported, never used to choose. Best epoch: the one "
        "with the lowest validation loss.",
        "",
        f"- epochs trained: {trained}"
        + (f"; pruning left out {saved} more that the pruned trials would have run" if count["pruned"] else ""),
        *(
            [f"- {retried} trial(s) stopped unfinished (interrupted, or their worker died) and ran again"]
            * bool(retried)
        ),
        *([f"- {duplicates} duplicate trial(s) not trained (two workers took one point)"] * bool(duplicates)),
        *[f"- {note}" for note in info["notes"]],
        f"- fixed: {_fixed_settings(info)}",
        "",
        "| rank | trial | " + " | ".join(_short(k) for k in keys) + " | status | epochs | best epoch "
        "| val acc | val loss | test acc | train s |",
        "|---:|---|" + "---|" * len(keys) + "---|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(ranked(rows), start=1):
        cells = [str(rank) if usable(row) else "–", f"`{row['trial']}`", *(_show(row[k]) for k in keys)]
        cells += [row["status"], _show(row.get("epochs")), _show(row.get("best_epoch"))]
        cells += [_percent(row.get(VAL_ACCURACY)), _show(row.get(VAL_LOSS), ".4f"), _percent(row.get(TEST_ACCURACY))]
        cells.append(_show(row.get("train_seconds"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![validation accuracy against learning rate](plots/accuracy_vs_rate.png)", ""]
    lines += ["![learning curves of the best trials](plots/learning_curves.png)", ""]
    if len(keys) > 1:
        lines += [f"![the best trial for each {_short(keys[0])}](plots/{_by_value_plot(keys[0])})", ""]
    return "\n".join(lines)


def _fixed_settings(info: dict) -> str:
    """The base config's training settings that no trial varies, in one line."""
    base = info["base"]
    train = {f"train.{k}": v for k, v in base["train"].items()}
    model = {f"model.{k}": v for k, v in base["model"].items()}
    fixed = {"seed": base["seed"], **model, **train}
    return ", ".join(f"{k}={'null' if v is None else _show(v)}" for k, v in fixed.items() if k not in info["keys"])


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


def _rate(row: dict) -> float:
    return row["config"]["train"]["learning_rate"]


def plot_accuracy_against_rate(rows: list[dict], path: Path) -> None:
    """Validation accuracy against learning rate, one series per L1 rate, a line through the best per rate."""
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    groups: dict[float, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["config"]["train"]["l1"], []).append(row)
    for l1, members in sorted(groups.items()):
        ok = [(_rate(r), r[VAL_ACCURACY] * 100) for r in members if usable(r)]
        best: dict[float, float] = {}
        for rate, accuracy in ok:
            best[rate] = max(accuracy, best.get(rate, -1.0))
        rates = sorted(best)
        (line,) = ax.plot(rates, [best[rate] for rate in rates], label=f"λ = {l1:g}")
        ax.scatter([r for r, _ in ok], [a for _, a in ok], color=line.get_color(), s=14, alpha=0.6)
        failed = [_rate(r) for r in members if not usable(r)]
        # Trials that did not finish (diverged, pruned) sit on the bottom edge: no accuracy worth plotting.
        ax.scatter(failed, [0.02] * len(failed), transform=ax.get_xaxis_transform(), marker="x", color=line.get_color())
    if not all(usable(row) for row in rows):
        ax.scatter([], [], marker="x", color="gray", label="diverged or pruned")
    rates = [_rate(row) for row in rows] or [1.0]
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 1.5, max(rates) * 1.5)  # the markers at the bottom do not widen the data limits
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


def plot_learning_curves(rows: list[dict], keys: list[str], path: Path, title: str = "") -> None:
    """Validation loss and accuracy per epoch of the given trials (default title: the best ones), from the
    curve each trial recorded in the study: [epoch, validation loss, validation accuracy] per epoch."""
    fig = new_figure(10, 4.2)
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for row in rows:
        epochs, losses, accuracies = zip(*row["curve"], strict=True) if row["curve"] else ((), (), ())
        label = f"{row['trial'][:6]} " + " ".join(f"{_short(k)}={_show(row[k])}" for k in keys)
        loss_ax.plot(epochs, losses, marker=".", label=label)
        accuracy_ax.plot(epochs, [a * 100 for a in accuracies], marker=".", label=label)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("validation loss")
    accuracy_ax.set_ylabel("validation accuracy (%)")
    for ax in (loss_ax, accuracy_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    if rows:
        accuracy_ax.legend(fontsize="x-small")
    else:
        accuracy_ax.text(0.5, 0.5, "no trial trained without diverging", ha="center", transform=accuracy_ax.transAxes)
    fig.suptitle(title or f"Learning curves of the best {len(rows)} trials")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------
# Console


def say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def header(sweep: Sweep, out: Path, done: int, pending: int, workers: int, threads: int) -> str:
    lines = [
        f"sweep {sweep.path}: {sweep.budget} trials over {', '.join(sweep.keys)} ({sweep.sampler.name} sampler, "
        f"pruner {sweep.pruner.name}); {done} already done, {pending} to run in {workers} worker(s) x "
        f"{threads} thread(s); output: {out}"
    ]
    return "\n".join(lines + [f"  {note}" for note in sweep.notes])


def _describe(row: dict, keys: list[str]) -> str:
    return " ".join(f"{_short(k)}={_show(row[k], '.3g')}" for k in keys)


def _figures(row: dict) -> str:
    if row["status"] == "pruned":
        return f"pruned after {plural(row.get('epochs') or 0, 'epoch')} (val loss {_show(row.get(VAL_LOSS), '.4f')})"
    if not usable(row):
        return f"diverged after {plural(row.get('epochs') or 0, 'epoch')}"
    return (
        f"val {row[VAL_ACCURACY]:.2%} (loss {row[VAL_LOSS]:.4f})  "
        f"test {row[TEST_ACCURACY]:.2%}  {plural(row['epochs'], 'epoch')}, {row['status']}"
    )


def progress_line(count: int, total: int, row: dict, best: dict, keys: list[str]) -> str:
    seconds = f"  {row['train_seconds']:.1f} s" if row.get("train_seconds") is not None else ""
    lead = f"[{count}/{total}] {row['trial']} {_describe(row, keys)}: {_figures(row)}{seconds}"
    if not usable(best):
        return f"{lead}  | best: none yet"
    return f"{lead}  | best: {best['trial']} val {best[VAL_ACCURACY]:.2%}"


def closing_line(best: dict, out: Path) -> str:
    return (
        f"best: {best['trial']} ({best[VAL_ACCURACY]:.2%} validation, {best[TEST_ACCURACY]:.2%} test, "
        f"{plural(best['epochs'], 'epoch')}); config: {out / 'best.yaml'}, table: {out / 'summary.md'}"
    )
