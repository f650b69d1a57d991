"""The sweep's Optuna study: where it is kept, how its trials are chosen and pruned, and what each one records.

The study lives in a database: by default a SQLite file in the sweep folder (OUT/study.db), or any SQLAlchemy
URL Optuna supports (`--storage`), e.g. a PostgreSQL server that workers on several machines share. A grid or
random sweep runs on Optuna's GridSampler: trial number k takes point k of the grid, so workers never pick the
same point while the numbers last; the random draws are one more grid dimension, `draw`, whose number gives
the draw's values (DrawSampler). Once retries have taken numbers, a later trial takes a random point not yet
run, and two workers can take the same one at the same moment: the later trial then does not train (it is
marked a duplicate), and on one machine the trial folder's lock keeps a second worker out of it. A TPE
sweep runs TPESampler. Each trial records its swept values, its complete config, the machine and folder it
trains in, its status and figures, and its validation curve, so that the report can be written from the
study alone.

A running trial writes a heartbeat; one silent for GRACE_SECONDS (its worker killed, its machine gone) is
failed by the next worker that looks and queued again (Optuna's retry callback), as is a trial stopped by
Ctrl-C. Failed trials are kept in the study, each beside its retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from mnist_mlp.errors import UserError, first_line
from mnist_mlp.sweep_file import Sweep, comparable, encode, trial_id

STUDY_FILE = "study.db"  # the default storage, in the sweep folder
HEARTBEAT_SECONDS = 10  # how often a running trial says it is alive
GRACE_SECONDS = 30  # a trial silent this long is taken for dead, failed and queued again
DRAW = "draw"  # the grid dimension that numbers the random section's draws
SWEEP_ATTR = "sweep"  # the study's record of the sweep it runs
ROW_ATTRS = {"id", "order", "values", "config"}  # what a trial's row needs of what start_trial records
POSTGRES_EXTRA = "pip install 'mnist-mlp[postgres]' (or make install POSTGRES=1)"


@contextlib.contextmanager
def _stable_enough() -> Iterator[None]:
    """Heartbeats and the retry callback are marked experimental (since Optuna 2.8-2.9); the sweep relies on
    them, and says nothing each time it uses them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


with _stable_enough():
    RETRY = RetryHeartbeatStaleTrialCallback()  # a copy of the failed trial, same values, queued (WAITING)


@dataclass(frozen=True)
class Place:
    """Where a sweep runs: its folder on this machine, and its study (database URL and name)."""

    out: Path
    url: str
    study: str | None


def sweep_place(out: Path, storage: str | None, study: str | None, must_exist: bool = False) -> Place:
    """The sweep folder `out` and its study: --storage (default: OUT/study.db, which `must_exist` for a report)."""
    if must_exist and storage is None and not (Path(out) / STUDY_FILE).is_file():
        raise UserError(f"{out}: no {STUDY_FILE} here; name the study's database with --storage (and --study)")
    return Place(Path(out), storage_url(storage, out), study)


def storage_url(storage: str | None, out: Path) -> str:
    """The study's SQLAlchemy URL: --storage, else the SQLite file in the sweep folder. postgresql:// means
    psycopg 3 (the `postgres` extra) whatever SQLAlchemy's default driver."""
    if storage is None:
        return f"sqlite:///{(Path(out) / STUDY_FILE).resolve()}"
    if storage.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def shown(url: str) -> str:
    """The URL with its password hidden, for messages."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(url: str) -> RDBStorage:
    """The study database, its tables made when new; a UserError (one line) when it cannot be reached."""
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):  # workers started at once on a new database race to create its tables
        try:
            with _stable_enough():
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=RETRY,
                )
        except ImportError as exc:
            module = exc.name or "it needs"
            fix = POSTGRES_EXTRA if url.startswith("postgres") else f"install the Python module {module}"
            raise UserError(f"--storage {shown(url)}: the database driver is not installed: {fix}") from None
        except sqlalchemy.exc.ArgumentError as exc:
            raise UserError(f"--storage {shown(url)}: not a database URL ({first_line(exc)})") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt == 2 or isinstance(exc, sqlalchemy.exc.OperationalError):
                raise UserError(f"--storage {shown(url)}: cannot open the database: {first_line(exc)}") from None
            time.sleep(1.0)
    raise AssertionError("unreachable")


def sampler_for(sweep: Sweep, trials: int = 0, worker: int = 0) -> optuna.samplers.BaseSampler:
    """GridSampler over the grid (and the draws) for grid and random sweeps; TPESampler for tpe.

    TPE's seed is the file's mixed with the machine's name, the number of trials the study held when this
    worker started and the worker's number: workers started together, on one machine or several, or a resumed
    sweep, do not repeat each other's first draws."""
    if sweep.sampler.name != "tpe":
        return DrawSampler(sweep)
    seed = int(hashlib.sha256(f"{sweep.seed}/{socket.gethostname()}/{trials}/{worker}".encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **sweep.sampler.settings)


def grid_space(sweep: Sweep) -> dict[str, list]:
    space = {key: encode(values) for key, values in sweep.grid.items()}
    return space | ({DRAW: list(range(len(sweep.draws)))} if sweep.draws else {})


def pruner_for(sweep: Sweep) -> optuna.pruners.BasePruner:
    """The file's pruner on the per-epoch validation loss; hyperband's largest budget is train.epochs."""
    name, settings = sweep.pruner.name, sweep.pruner.settings
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**settings)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(**{"max_resource": max_epochs(sweep), **settings})
    except ValueError as exc:
        raise UserError(f"{sweep.path}: pruner {name}: {exc}") from None
    return optuna.pruners.NopPruner()


def max_epochs(sweep: Sweep) -> int:
    if "train.epochs" in sweep.space:
        return int(max(next(iter(sweep.space["train.epochs"].values()))))
    return max([t.config.train.epochs for t in sweep.trials] or [sweep.base.train.epochs])


def fingerprint(sweep: Sweep) -> str:
    """What makes two sweeps the same search: base config, grid, draws, space, sampler, pruner, budget."""
    what = {
        "base": comparable(sweep.base),
        "grid": sweep.grid,
        "draws": sweep.draws,
        "space": sweep.space,
        "sampler": [sweep.sampler.name, sweep.sampler.settings],
        "pruner": [sweep.pruner.name, sweep.pruner.settings],
        "budget": sweep.budget,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_study(sweep: Sweep, storage: RDBStorage, name: str, worker: int = 0) -> optuna.Study:
    """The sweep's study in `storage`, made on first use, for worker number `worker` of this machine; a study
    of another sweep under that name is refused."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler_for(sweep),
        pruner=pruner_for(sweep),
        direction="minimize",  # the validation error (1 − validation accuracy); pruned on validation loss
        load_if_exists=True,
    )
    recorded = study.user_attrs.get(SWEEP_ATTR)
    if recorded is None:
        study.set_user_attr(SWEEP_ATTR, describe(sweep))
    elif recorded["fingerprint"] != fingerprint(sweep):
        raise UserError(
            f"study {name} in {shown(storage.url)} runs another search ({recorded['file']}, different settings); "
            "give another --study name (or another --out folder)"
        )
    study.sampler = sampler_for(sweep, len(study.get_trials(deepcopy=False)), worker)
    return study


def load_study(storage: RDBStorage, name: str | None) -> optuna.Study:
    """An existing sweep study, for its report; `name` may be left out when the storage holds one study."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            listed = ", ".join(names) or "none"
            raise UserError(f"{shown(storage.url)} holds {len(names)} studies ({listed}): name one with --study")
        name = names[0]
    if name not in names:
        raise UserError(f"no study {name} in {shown(storage.url)} (studies there: {', '.join(names) or 'none'})")
    study = optuna.load_study(study_name=name, storage=storage)
    if SWEEP_ATTR not in study.user_attrs:
        raise UserError(f"study {name} in {shown(storage.url)} was not made by mnist-mlp sweep")
    return study


def describe(sweep: Sweep) -> dict:
    """The study's record of its sweep, all that the report needs besides the trials."""
    return {
        "file": str(sweep.path),
        "keys": sweep.keys,
        "sampler": sweep.sampler.name,
        "pruner": sweep.pruner.name,
        "budget": sweep.budget,
        "base": sweep.base.to_dict(),
        "notes": sweep.notes,
        "fingerprint": fingerprint(sweep),
    }


def suggest(trial: optuna.Trial, sweep: Sweep) -> dict[str, Any]:
    """This trial's values of the swept keys, recorded as its parameters with their distributions: the grid
    point (and draw) the sampler gave it, or TPE's choice."""
    values = {}
    for key, choices in grid_space(sweep).items():  # the draw's number first: its values follow from it
        value = trial.suggest_categorical(key, choices)
        if key != DRAW:
            values[key] = sweep.decode(key, value)
    for key, spec in sweep.space.items():
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            values[key] = sweep.decode(key, trial.suggest_categorical(key, encode(args)))
        elif kind == "int_uniform":
            values[key] = trial.suggest_int(key, args[0], args[1])
        else:
            values[key] = trial.suggest_float(key, args[0], args[1], log=kind == "log_uniform")
    return values


class DrawSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the grid and the draws' numbers, which answers each random key of a trial
    with the value of the draw it was given."""

    def __init__(self, sweep: Sweep):
        super().__init__(grid_space(sweep), seed=sweep.seed)  # the seed orders the grid: the same in every worker
        self.reseed_rng()  # but the point not yet run that a trial takes once the numbers no longer give one:
        # each worker's own, so that two workers picking at once rarely pick alike
        self.grid, self.draws = grid_space(sweep), sweep.draws

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name in self.grid:
            return super().sample_independent(study, trial, param_name, param_distribution)
        value = self.draws[trial.params[DRAW]][param_name]
        return encode([value])[0]


def order_of(sweep: Sweep, values: dict[str, Any]) -> int:
    """A grid or random trial's place in the sweep file's order (the report's order, and its tie-break)."""
    ids = [t.id for t in sweep.trials]
    return ids.index(trial_id(sweep.config_for(values))) if ids else -1


def start_trial(trial: optuna.Trial, sweep: Sweep, values: dict, folder: Path) -> str | None:
    """Record what this trial trains and where; the number of an earlier live trial of the same config
    (a duplicate, which must not train again) or None."""
    config = sweep.config_for(values)
    ident = trial_id(config)
    order = order_of(sweep, values)
    trial.set_user_attr("id", ident)
    trial.set_user_attr("order", trial.number if order < 0 else order)
    trial.set_user_attr("values", values)
    trial.set_user_attr("config", config.to_dict())
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("folder", str(Path(folder).resolve()))
    for other in trial.study.get_trials(deepcopy=False):
        if other.number < trial.number and other.user_attrs.get("id") == ident and other.state != TrialState.FAIL:
            trial.set_user_attr("duplicate_of", other.number)
            return str(other.number)
    return None


def retry(study: optuna.Study, number: int) -> None:
    """Queue trial `number` again (it stopped before finishing): a WAITING copy with the same values."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    RETRY(study, frozen)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating, each queued again (once, whichever worker sees it)."""
    with _stable_enough():
        optuna.storages.fail_stale_trials(study)


def counts(study: optuna.Study, sweep: Sweep) -> tuple[int, int, int]:
    """(trials still to be started, trials waiting to run again, trials running) in the study now."""
    trials = study.get_trials(deepcopy=False)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if sweep.sampler.name == "tpe":  # failed trials have their retry; duplicates use up the budget
        used = sum(t.state != TrialState.FAIL or "duplicate_of" in t.user_attrs for t in trials)
    else:  # each point once, whatever became of it (a failed one has its retry)
        used = len({t.system_attrs["grid_id"] for t in trials if "grid_id" in t.system_attrs})
    return max(0, sweep.budget - used), waiting, running


# ---------------------------------------------------------------------------------------------------
# What the study holds, as the report's rows


def study_info(study: optuna.Study) -> dict:
    """The study's record of its sweep (see describe), with the study's name."""
    return {**study.user_attrs[SWEEP_ATTR], "study": study.study_name}


def rows(study: optuna.Study) -> list[dict]:
    """One row per trial that trained (finished, pruned, diverged) or is training, in the sweep's order:
    its id, number, swept values, status, figures, machine, folder, config and validation curve."""
    found = []
    for trial in study.get_trials(deepcopy=False):
        # start_trial records a trial's attributes one at a time, so another worker may see a new trial with only
        # some of them: it joins the rows once all are there.
        recorded = trial.user_attrs.keys() >= ROW_ATTRS
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) and recorded:
            found.append(row_of(trial))
    return sorted(found, key=lambda row: (row["order"], row["number"]))


def row_of(trial: FrozenTrial) -> dict:
    attrs = trial.user_attrs
    status = {TrialState.PRUNED: "pruned", TrialState.RUNNING: "running"}.get(trial.state, attrs.get("status"))
    return {
        "trial": attrs["id"],
        "number": trial.number,
        "order": attrs["order"],
        **attrs["values"],
        "status": status,
        **attrs.get("metrics", {}),
        "host": attrs.get("host"),
        "folder": attrs.get("folder"),
        "config": attrs["config"],
        "curve": attrs.get("curve", []),
    }


def failures(study: optuna.Study) -> tuple[int, int]:
    """(trials that stopped unfinished and were queued again, duplicates that did not train)."""
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    duplicates = sum("duplicate_of" in t.user_attrs for t in failed)
    return len(failed) - duplicates, duplicates
