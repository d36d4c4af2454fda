"""The search itself, on Optuna: trials choose a candidate, its latency is predicted, those over
the budget are pruned before any training, the rest get a short KD training whose validation
accuracy is the trial's value.

The study lives in Optuna's RDB storage: a SQLite file in the stage folder by default, so a
killed search resumes with its finished trials (a trial cut off mid-way is run again), or a
PostgreSQL/MySQL URL that several machines share. Objectives: `budget` (TPE, best proxy accuracy
under the budget) and `pareto` (NSGA-II on accuracy and latency; the front goes into the report).
Every trial is kept with its reason: over budget, a duplicate of an earlier one, or the error of
a candidate that does not build, export or run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekd.errors import EdgeKDError
from edgekd.search.cost import cost
from edgekd.search.predict import Predictor, SearchError
from edgekd.search.space import Student
from edgekd.search.structural import Space

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.db"


@dataclass
class Settings:
    space: Space
    budget_ms: float
    objective: str  # budget | pareto
    trials: int
    seed: int
    shape: tuple[int, int]  # input channels, classes


def storage_url(url: str | None, folder: Any) -> str:
    return url or f"sqlite:///{folder / STUDY_FILE}"


def open_study(settings: Settings, url: str, name: str, local: bool) -> optuna.Study:
    """Create or load the study; in edgekd's own SQLite file, trials left RUNNING by a killed
    process are marked failed and queued again (a shared database's belong to other machines)."""
    import optuna
    from optuna.study import StudyDirection

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # edgekd logs each trial itself
    if settings.objective == "pareto":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(seed=settings.seed)
        directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=8)
        directions = [StudyDirection.MAXIMIZE]
    study = optuna.create_study(
        storage=url,
        study_name=name,
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )
    if local:
        for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params)
    return study


def finished(study: optuna.Study) -> int:
    """Trials that count towards `trials:`: not one that was interrupted (failed without an
    error of its candidate) or is still waiting in the queue."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(
        t.state in states or (t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def run(
    study: optuna.Study,
    settings: Settings,
    predictor: Predictor,
    proxy: Callable[[Student, int], float],
    log: Callable[[str], None],
) -> None:
    """Run trials until `settings.trials` have finished (counting those of earlier runs)."""
    import optuna

    space = settings.space
    choices = space.params()

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        params = {name: trial.suggest_categorical(name, values) for name, values in choices.items()}
        candidate = space.candidate(params)
        size = cost(candidate, *settings.shape)
        trial.set_user_attr("student", candidate.describe())
        trial.set_user_attr("model", candidate.model())
        trial.set_user_attr("params", size.params)
        trial.set_user_attr("macs", size.macs)
        try:
            latency = predictor.predict(candidate)
        except SearchError as exc:
            trial.set_user_attr("error", str(exc))
            log(f"trial {trial.number}: {candidate.describe()}: {exc}")
            raise
        trial.set_user_attr("latency_ms", latency.ms)
        trial.set_user_attr("latency_source", latency.source)
        if latency.ms > settings.budget_ms:
            reason = f"over budget: {latency.ms:.4f} ms > {settings.budget_ms} ms"
            trial.set_user_attr("rejected", reason)
            log(f"trial {trial.number}: {candidate.describe()}: {reason}")
            raise optuna.TrialPruned(reason)
        earlier = same_candidate(trial.study, params, trial.number)
        if earlier is not None:
            accuracy = float(earlier.user_attrs["proxy_acc"])
            trial.set_user_attr("duplicate_of", earlier.number)
        else:
            accuracy = proxy(candidate, trial.number)
        trial.set_user_attr("proxy_acc", accuracy)
        log(
            f"trial {trial.number}: {candidate.describe()}: {latency.ms:.4f} ms "
            f"({latency.source}), proxy val acc {accuracy:.2f}%"
        )
        return (accuracy, latency.ms) if settings.objective == "pareto" else accuracy

    remaining = settings.trials - finished(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(SearchError,))


def same_candidate(study: optuna.Study, params: dict[str, Any], number: int) -> Any:
    """An earlier trial that trained the same candidate (samplers may propose one twice)."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        if trial.number != number and trial.params == params and "proxy_acc" in trial.user_attrs:
            return trial
    return None


def rows(study: optuna.Study, chosen: int | None, front: set[int]) -> list[dict[str, Any]]:
    """Every trial for the report: what it was, what it cost, and what became of it."""
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if t.number == chosen:
            outcome = "chosen"
        elif "error" in attrs:
            outcome = f"failed: {attrs['error']}"
        elif "rejected" in attrs:
            outcome = attrs["rejected"]
        elif "duplicate_of" in attrs:
            outcome = f"same student as trial {attrs['duplicate_of']}"
        elif t.state.name == "COMPLETE":
            outcome = "within budget, less accurate"
        elif t.state.name == "FAIL":
            outcome = "interrupted (run again)"
        else:
            outcome = t.state.name.lower()
        out.append(
            {
                "trial": t.number,
                "student": attrs.get("student"),
                "params": attrs.get("params"),
                "macs": attrs.get("macs"),
                "latency_ms": attrs.get("latency_ms"),
                "latency_source": attrs.get("latency_source"),
                "proxy_val_acc": attrs.get("proxy_acc"),
                "pareto": t.number in front,
                "outcome": outcome,
            }
        )
    return out


def ranked(study: optuna.Study) -> list[Any]:
    """Trials within the budget, best first: higher proxy accuracy, then lower latency."""
    import optuna

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if "proxy_acc" in t.user_attrs
    ]
    return sorted(done, key=lambda t: (-t.user_attrs["proxy_acc"], t.user_attrs["latency_ms"]))


def no_fit_error(study: optuna.Study, settings: Settings, target: str) -> EdgeKDError:
    """The budget no trial met: name the fastest candidate seen and its latency."""
    timed = [t for t in study.get_trials(deepcopy=False) if "latency_ms" in t.user_attrs]
    if not timed:
        errors = {t.user_attrs.get("error", t.state.name) for t in study.get_trials(deepcopy=False)}
        return EdgeKDError(f"no candidate could be timed on {target}: {'; '.join(errors)}")
    fastest = min(timed, key=lambda t: t.user_attrs["latency_ms"])
    return EdgeKDError(
        f"no candidate meets the budget of {settings.budget_ms:.4f} ms on {target}: the fastest of "
        f"{len(timed)} timed was {fastest.user_attrs['student']} at "
        f"{fastest.user_attrs['latency_ms']:.4f} ms ({fastest.user_attrs['latency_source']}); "
        "raise the budget or add smaller choices (width, depth, expand) to `space:`"
    )
