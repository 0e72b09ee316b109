"""The closed loop of ``generate --measure N`` / ``--train N``: measure the candidates that decide the answer.

One search proposes the candidates; then, in rounds, the loop (1) scores them with the refitted models, every
measured value beating its prediction, (2) stops when the top pick is measured within budget and no unmeasured
candidate is likely to beat it, or when the measurements are spent, else (3) times and / or trains the
unmeasured candidates of highest expected improvement, adds them to the latency model (the profile's
calibration timings) and the accuracy model (the task's measurements), refits, and goes round again.

Acquisition (``acquire``): constrained expected improvement (Gardner et al. 2014; Gelbart et al. 2014). Each
candidate's accuracy is Normal(prediction, the accuracy model's cross-validated sigma) while it can still be
trained, else its prediction (or measurement); its chance of fitting the latency budget is the latency
model's per-net log-normal while it can still be timed (``SearchProblem.p_within_budget``), else the
``--confidence`` rule. EI(x) = P(fits) x E[(A(x) - a*)+], a* the accuracy of the best net measured within
budget (with none yet, the least accurate net the confidence rule accepts). The top pick is measured first.

Stop rule: the top pick is settled (measured in all the loop measures) and within budget, and the chance that
any unsettled candidate (one per function) beats it, bounded by the sum of P(fits) x P(A > a_pick), is below
``1 - level`` (10% at the default --confidence 90%).

Every timing and training is written to ``RUN/loop.json`` as soon as it is made: a re-run with the same
``--out`` resumes without measuring a net again. The finished loop leaves one new profile revision (and one
new dataset profile revision) holding its measurements.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset_profile import dataset_label, refit_accuracy_model
from .errors import UserError
from .files import atomic_write_json, read_user_json
from .hardware.timers import RunnerTimer, profile_protocol, timer_for_profile
from .predictors import with_timings
from .problem import SearchProblem, normal_cdf
from .profiler import net_graph
from .runs import LOOP_FILE, new_run_dir
from .selection import run_search, select
from .trainers import make_trainer, measure_all

LOOP_SCHEMA = "pomonag-edge/loop"
ROUNDS = 4  # a round spends about a quarter of each budget: the models are refitted between rounds
STOP_REASONS = {
    "converged": "the top pick is measured within budget and no unmeasured candidate is likely to beat it",
    "spent": "the measurements allowed are spent",
    "exhausted": "no unmeasured candidate can still improve the pick",
    "infeasible": "no candidate can still fit the budget",
}


@dataclass
class LoopOptions:
    """What ``generate`` may measure, and where: ``measure`` timings on the profile's device (this machine,
    ``host`` through the runner), ``train`` trainings with ``trainer`` (a command) or on ``data``."""

    measure: int = 0
    train: int = 0
    host: str | None = None
    ssh: object | None = None
    trainer: str | None = None
    data: str | None = None
    epochs: int | None = None
    train_device: str | None = None
    ray: object | None = None  # a fanout.RayOptions: each --train net one Ray task
    threads: int | None = None  # torch threads per trained net (--cpus-per-net)

    def __post_init__(self):
        if self.measure < 0 or self.train < 0:
            raise UserError("--measure and --train must be 0 or more")

    @property
    def active(self) -> bool:
        return self.measure > 0 or self.train > 0 or self.trainer is not None or self.data is not None


# ------------------------------------------------------------------ the journal


@dataclass
class Journal:
    """``RUN/loop.json``: the loop's measurements, rounds and stop reason, rewritten after each measurement."""

    path: Path
    identity: dict
    timings: list[dict] = field(default_factory=list)
    trainings: list[dict] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    stop: dict | None = None

    @classmethod
    def open(cls, path: Path, identity: dict) -> "Journal":
        """The journal at ``path``, resumed when it holds a loop of the same request, else a new one."""
        journal = cls(Path(path), identity)
        if journal.path.is_file():
            old = read_user_json(journal.path, "closed-loop journal")
            if not isinstance(old, dict) or old.get("schema") != LOOP_SCHEMA:
                raise UserError(f"{journal.path} is not a closed-loop journal: --out a new folder")
            if old.get("identity") != identity:
                diff = [k for k in identity if old.get("identity", {}).get(k) != identity[k]]
                raise UserError(f"{journal.path} holds a loop of another request ({', '.join(diff)} differ): pass "
                                "--force to start the run over, or --out a new folder")
            journal.timings, journal.trainings = list(old.get("timings", [])), list(old.get("trainings", []))
        return journal

    def to_dict(self) -> dict:
        return {"schema": LOOP_SCHEMA, "schema_version": 1, "identity": self.identity, "timings": self.timings,
                "trainings": self.trainings, "rounds": self.rounds, "stop": self.stop}

    def save(self) -> None:
        atomic_write_json(self.path, self.to_dict(), "closed-loop journal")


# ------------------------------------------------------------------ acquisition


@dataclass
class Decision:
    stop: str | None  # a key of STOP_REASONS, or None to go on
    to_time: list  # archs to time this round
    to_train: list  # archs to train this round
    p_beat: float | None  # chance bound that an unsettled candidate beats the settled top pick
    incumbent: float | None  # accuracy of the best net measured within budget


def acquire(problem, result, *, timings_left: int, trainings_left: int, batch_time: int,
            batch_train: int) -> Decision:
    """Where the next round's measurements go, or why the loop stops (see the module's docstring)."""
    archs = list(result.candidates)
    if not archs:
        return Decision("infeasible", [], [], None, None)
    space, level = problem.space, problem.level
    s = problem.evaluate(archs, count=False)
    b = problem.budget
    cost_ok = np.ones(len(archs), dtype=bool)
    for key, limit in (("params", b.max_params), ("macs", b.max_macs)):
        if limit is not None:
            cost_ok &= s[key] <= limit
    lat_known = (s["latency_measured"] > 0) | (b.max_latency_ms is None)
    acc_known = s["accuracy_measured"] > 0
    p = problem.p_within_budget(s)
    # while timings are left an unmeasured net fits with its model probability; after, the confidence rule decides
    pof = np.where(lat_known | (timings_left > 0), p, (p >= level - 1e-12).astype(np.float64)) * cost_ok
    lat_settled = lat_known | (timings_left == 0)
    acc_settled = acc_known | (trainings_left == 0)
    settled = lat_settled & acc_settled
    mu = s["accuracy"]
    sd = np.where(acc_settled, 0.0, float(problem.predictors.accuracy_sigma))
    good = settled & (pof >= 1.0)
    incumbent = float(mu[good].max()) if good.any() else None
    floor = incumbent
    if floor is None:  # no net settled within budget yet: improvement over the least accurate acceptable one
        ok = pof >= level
        floor = float(mu[ok].min()) if ok.any() else float(mu.min())

    def beat(a_star: float) -> tuple[np.ndarray, np.ndarray]:
        """(P(A > a*), E[(A - a*)+]) per candidate."""
        gap = mu - a_star
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, gap / np.where(sd > 0, sd, 1.0), 0.0)
        cdf, pdf = normal_cdf(z), np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        prob = np.where(sd > 0, cdf, (gap > 0).astype(np.float64))
        gain = np.where(sd > 0, sd * pdf + gap * cdf, np.maximum(gap, 0.0))
        return prob, gain

    classes = [space.canonical(a) for a in archs]
    _, gain = beat(floor)
    ei = pof * gain
    top = result.selected[0]["arch"] if result.selected else None
    top_i = next((i for i, a in enumerate(archs) if str(a) == top), None)
    p_beat = None
    if top_i is not None and settled[top_i] and pof[top_i] >= 1.0:
        prob, _ = beat(float(mu[top_i]))
        chance = np.where(settled, 0.0, pof * prob)
        per_class: dict = {}
        for c, v in zip(classes, chance):
            per_class[c] = max(per_class.get(c, 0.0), float(v))
        p_beat = float(sum(per_class.values()))
        if p_beat < 1.0 - level:
            return Decision("converged", [], [], p_beat, incumbent)
    if timings_left == 0 and trainings_left == 0:
        return Decision("spent", [], [], p_beat, incumbent)
    if not (pof > 0).any():
        return Decision("infeasible", [], [], p_beat, incumbent)

    def pick(unknown: np.ndarray, size: int) -> list:
        """The ``size`` unknown candidates of highest EI (the top pick first), one per function."""
        if size <= 0:
            return []
        order = [i for i in np.argsort(-ei, kind="stable") if unknown[i] and ei[i] > 0]
        if top_i is not None and unknown[top_i] and pof[top_i] > 0:
            order = [top_i] + [i for i in order if i != top_i]
        chosen, seen = [], set()
        for i in order:
            if classes[i] not in seen:
                seen.add(classes[i])
                chosen.append(archs[i])
            if len(chosen) == size:
                break
        return chosen

    to_time = pick(~lat_known & cost_ok, min(timings_left, batch_time))
    to_train = pick(~acc_known & cost_ok, min(trainings_left, batch_train))
    if not to_time and not to_train:
        return Decision("exhausted", [], [], p_beat, incumbent)
    return Decision(None, to_time, to_train, p_beat, incumbent)


def batch_size(total: int) -> int:
    """Measurements per round: about a quarter of ``total``, at least one."""
    return max(1, math.ceil(total / ROUNDS)) if total > 0 else 0


# ------------------------------------------------------------------ measuring


class LoopTimer:
    """Times nets on the device the profile was taken on (``timers.timer_for_profile``: its command, ``host``
    through the runner, or its backend on this machine, checked to be the profile's device), as it was timed."""

    def __init__(self, space, profile, options: LoopOptions, work: Path, key: str):
        self.protocol = profile_protocol(profile)
        self.space, self.profile = space, profile
        self.dataset, self.batch = profile.dataset, int((profile.runtime or {}).get("batch") or 1)
        self.timer = timer_for_profile(profile, host=options.host, ssh=options.ssh, key=key, cache_dir=work / "graphs")
        self.batched = isinstance(self.timer, RunnerTimer)
        self.where = self.timer.where
        if (profile.device or {}).get("runner") == "command" or getattr(self.timer, "descriptor", None) is not None:
            return  # a command is its device, wherever it runs
        recorded = profile.identity_recorded
        where = options.host or "this machine"
        if not recorded and options.host is None:
            raise UserError(f"profile {profile.name!r} records no device facts, so this machine cannot be told to be "
                            "its device: pass --host USER@ADDR of the device")
        if recorded:
            mismatch = profile.identity_mismatch(self.timer.facts(), where)
            if mismatch:
                raise UserError(f"{where} is not the device of profile {profile.name!r} ({'; '.join(mismatch)}): "
                                "pass --host USER@ADDR of that device, or a profile of this one")

    def time(self, archs: list, record, progress=None) -> None:
        """Time ``archs``; ``record(arch, stats)`` as each finishes (the runner: after its batch)."""
        prefix = f"{self.space.name}/{self.dataset}/b{self.batch}"
        chunks = [archs] if self.batched else [[a] for a in archs]
        for chunk in chunks:
            graphs = {f"{prefix}/net/{a}": net_graph(self.space, a, self.dataset, self.batch, 0) for a in chunk}
            timed = self.timer.time(graphs)
            for a in chunk:
                m = timed[f"{prefix}/net/{a}"]
                record(a, {"arch": str(a), "latency_ms": m.median_ms, **m.to_dict(), "source": "generate",
                           "protocol": self.protocol.name})


class LoopTrainer:
    """Measures a net's accuracy for the task the way its dataset profile was measured (``trainers.make_trainer``:
    ``--trainer CMD`` or the built-in recipe on ``--data``), with the probes' epochs and seed where the profile
    records them, so the new measurements sit on the same scale as the old."""

    def __init__(self, space, task, options: LoopOptions, workdir: Path, seed: int):
        probe = task.source.get("probe") or {}
        epochs = options.epochs or int(probe.get("epochs") or 10)
        seed = int(probe.get("seed", seed))
        self.trainer = make_trainer(space, command=options.trainer, data=options.data, epochs=epochs, seed=seed,
                                    workdir=workdir, device=options.train_device, num_classes=task.num_classes,
                                    name=task.name, threads=options.threads)
        self.ray = options.ray
        fingerprint = getattr(getattr(self.trainer, "data", None), "source", {}).get("fingerprint")
        if fingerprint and task.source.get("fingerprint") and fingerprint != task.source["fingerprint"]:
            raise UserError(f"--data {options.data} is not the data dataset profile {task.name} was measured on: pass "
                            "that data, or probe this data into its own profile")
        self.facts = {"epochs": epochs, "seed": seed}
        self.where = f"--trainer {options.trainer}" if options.trainer else f"built-in recipe on {options.data}"

    def measure(self, archs: list, on_measured) -> None:
        """Train the round's nets (in turn here, or as Ray tasks), then ``on_measured(arch, accuracy)`` for each
        in order; nets the trainer has logged already (a resumed run) are not trained again."""
        measure_all(self.trainer, archs, lambda arch: None, ray=self.ray)
        for arch in archs:
            on_measured(arch, float(self.trainer.measure(arch)))


def with_trainings(space, task, trainings: list[dict]):
    """A copy of the dataset profile ``task`` whose measurements hold ``trainings`` too, its accuracy model refitted
    on the same shipped tables as before."""
    if not trainings:
        return task
    new = copy.deepcopy(task)
    trained = {t["arch"] for t in trainings}
    new.measurements = [m for m in new.measurements if m["arch"] not in trained] + [dict(t) for t in trainings]
    refit_accuracy_model(space, new)
    return new


# ------------------------------------------------------------------ the loop


@dataclass
class LoopOutcome:
    result: object  # SearchResult of the last round
    problem: object
    profile: object  # the profile with the loop's timings (the revision to save), or the one given
    task: object  # the dataset profile with the loop's trainings, or the one given (None for a shipped dataset)
    journal: Journal
    summary: dict


def run_loop(*, space, profile, task, dataset, budget, level, strategy, samples, num, seed, options: LoopOptions,
             journal: Journal, predictors_for, timer_factory, trainer_factory, progress=None, say=None) -> LoopOutcome:
    """Search once, then measure in rounds until the stop rule holds (module docstring). ``predictors_for(profile,
    dataset)`` gives the round's predictors; ``timer_factory()`` / ``trainer_factory()`` are called once, when
    the first timing / training is due."""
    say = say or (lambda message: None)
    batch_time, batch_train = batch_size(options.measure), batch_size(options.train)
    timer = trainer = None
    pool, search_stats = None, None
    started = time.perf_counter()
    while True:
        prof_now = with_timings(space, profile, journal.timings)
        task_now = with_trainings(space, task, journal.trainings) if task is not None else None
        preds = predictors_for(prof_now, task_now if task_now is not None else dataset)
        problem = SearchProblem(space, task_now if task_now is not None else dataset, budget, preds, level=level)
        measured = [space.parse(a) for a in {**preds.measured_latency_ms, **preds.measured_accuracy}]
        if pool is None:
            result = run_search(problem, strategy, samples=samples, num=num, seed=seed, progress=progress,
                                extra=measured)
            pool, search_stats = list(result.candidates), dict(result.stats)
        else:
            result = select(problem, pool + measured, num=num)
        decision = acquire(problem, result, timings_left=options.measure - len(journal.timings),
                           trainings_left=options.train - len(journal.trainings), batch_time=batch_time,
                           batch_train=batch_train)
        top = result.selected[0] if result.selected else None
        entry = {"round": len(journal.rounds) + 1, "timings_before": len(journal.timings),
                 "trainings_before": len(journal.trainings), "top_pick": top and top["arch"],
                 "top_pick_accuracy": top and (top["accuracy_measured"] or top["accuracy"]),
                 "top_pick_measured": bool(top and top["latency_ms_measured"] is not None),
                 "p_beat": decision.p_beat, "incumbent_accuracy": decision.incumbent,
                 "timed": [str(a) for a in decision.to_time], "trained": [str(a) for a in decision.to_train]}
        journal.rounds.append(entry)
        if decision.stop is not None:
            journal.stop = {"reason": decision.stop, "why": STOP_REASONS[decision.stop],
                            "threshold": round(1.0 - level, 6), "p_beat": decision.p_beat}
            journal.save()
            break
        say(f"round {entry['round']}: timing {len(decision.to_time)}, training {len(decision.to_train)} "
            f"(top pick {'measured' if entry['top_pick_measured'] else 'predicted'}"
            + (f", chance another beats it <= {min(decision.p_beat, 1.0):.0%}" if decision.p_beat is not None
               else "") + ")")
        if decision.to_time:
            timer = timer or timer_factory()

            def record_timing(arch, stats):
                journal.timings.append({**stats, "round": entry["round"]})
                journal.save()
                if progress is not None:
                    progress("timing", len(journal.timings), options.measure)

            timer.time(decision.to_time, record_timing)
        if decision.to_train:
            trainer = trainer or trainer_factory()

            def record_training(arch, accuracy):
                journal.trainings.append({"arch": str(arch), "accuracy": accuracy, "source": "generate",
                                          "round": entry["round"], **trainer.facts})
                journal.save()
                if progress is not None:
                    progress("training", len(journal.trainings), options.train)

            trainer.measure(decision.to_train, record_training)
    summary = {"measure": options.measure, "train": options.train, "timings": len(journal.timings),
               "trainings": len(journal.trainings), "rounds": len(journal.rounds), "stop": journal.stop,
               "search": search_stats, "seconds": round(time.perf_counter() - started, 2),
               "device": None if timer is None else timer.where,
               "trainer": None if trainer is None else trainer.where,
               "acquisition": "expected improvement x probability of fitting the budget (constrained EI)"}
    return LoopOutcome(result, problem, prof_now, task_now, journal, summary)


def closed_loop_run(space, profile, profile_spec, profile_path, dataset, dataset_spec, budget, level, strategy,
                    samples, num, seed, options: LoopOptions, out, force, predictors_for, progress=None,
                    say=None) -> dict:
    """``generate_run``'s closed loop: check the request, open the run folder's journal (resuming it), run the
    loop, save the profile and dataset profile revisions holding its measurements. ``profile_path``: the file
    ``profile`` was read from (None: a reference profile). Returns what the run records: ``out``, ``problem``,
    ``result``, ``profile`` / ``profile_spec`` / ``profile_path`` (the revision, when timings were added),
    ``dataset`` / ``dataset_spec`` (likewise), ``journal``, ``summary``."""
    if options.measure and budget.max_latency_ms is None:
        raise UserError("--measure times candidates against the latency budget: give --max-latency too")
    if profile_spec is None and not profile.reference:  # the default profile: its file gets the revision
        profile_spec = str(profile_path)
    if options.measure and (profile.reference or not _is_path(profile_spec)):
        raise UserError(f"--measure times nets on the profile's device, and {profile.name!r} is a reference profile "
                        "(published timings of another device): profile your device (`pomonag-edge profile`) and "
                        "pass that profile")
    task = None if isinstance(dataset, str) else dataset
    if options.train and task is None:
        raise UserError("--train adds measured accuracies to a task's dataset profile: pass --dataset PROFILE.json "
                        "(made by `pomonag-edge probe` or `calibrate`); a shipped dataset's table is measured already")
    if options.train and (options.trainer is None) == (options.data is None):
        raise UserError("--train measures accuracy with --data DIR (the built-in NB201 recipe on your images) or "
                        "--trainer CMD (your pipeline): give exactly one")
    if not options.train and (options.trainer is not None or options.data is not None):
        raise UserError("--trainer and --data say how --train measures accuracy: add --train N, or drop them")
    if out is None:
        out = new_run_dir()
    elif force and Path(out).is_dir():
        shutil.rmtree(Path(out) / ".loop", ignore_errors=True)
        (Path(out) / LOOP_FILE).unlink(missing_ok=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"space": space.name, "profile_sha256": profile.sha256, "dataset": dataset_label(dataset),
                "dataset_sha256": None if task is None else task.sha256, "budget": budget.to_dict(),
                "level": level, "strategy": strategy.name, "samples": samples, "seed": seed,
                "device": options.host or "this machine", "trainer": options.trainer or options.data}
    journal = Journal.open(out / LOOP_FILE, identity)
    if journal.timings or journal.trainings:
        (say or (lambda m: None))(f"resuming the closed loop in {out}: {len(journal.timings)} timings and "
                                  f"{len(journal.trainings)} trainings already made are kept")
    work = out / ".loop"
    key = f"generate:{out.resolve()}"
    try:
        outcome = run_loop(space=space, profile=profile, task=task, dataset=dataset, budget=budget, level=level,
                           strategy=strategy, samples=samples, num=num, seed=seed, options=options, journal=journal,
                           predictors_for=predictors_for,
                           timer_factory=lambda: LoopTimer(space, profile, options, work, key),
                           trainer_factory=lambda: LoopTrainer(space, task, options, work / "train", seed),
                           progress=progress, say=say)
    except KeyboardInterrupt:
        (say or print)(f"interrupted: the {len(journal.timings)} timings and {len(journal.trainings)} trainings "
                       f"made are kept in {journal.path}; the same command with --out {out} resumes")
        raise
    record = {"out": out, "problem": outcome.problem, "result": outcome.result, "journal": journal,
              "summary": outcome.summary, "profile": profile, "profile_spec": profile_spec,
              "profile_path": profile_path, "dataset": dataset, "dataset_spec": dataset_spec}
    if journal.timings:
        path = outcome.profile.save_revision(profile_spec, profile)
        record["profile"], record["profile_spec"], record["profile_path"] = outcome.profile, str(path), path
        outcome.summary["profile_revision"] = str(path)
    if journal.trainings and task is not None:
        path = outcome.task.save_revision(dataset_spec, task)
        record["dataset"], record["dataset_spec"] = outcome.task, str(path)
        outcome.summary["dataset_revision"] = str(path)
    shutil.rmtree(work, ignore_errors=True)
    return record


def _is_path(spec) -> bool:
    return spec is not None and (os.path.sep in str(spec) or str(spec).endswith(".json") or Path(spec).exists())


__all__ = ["LoopOptions", "Journal", "acquire", "run_loop", "STOP_REASONS"]
