"""Training one net of a space on the user's data, NB201's recipe, checkpointed every epoch.

Recipe (NAS-Bench-201's, scaled by ``epochs``): SGD with Nesterov momentum 0.9, learning rate 0.1 annealed
by a cosine to 0 over all steps, weight decay 5e-4, batch 256, cross-entropy. No data augmentation: flips
and crops that suit CIFAR can change the label of a digit or a gesture. Runs on a GPU when torch sees one.

Deterministic for a seed on one device: the seed fixes the initial weights and every epoch's shuffle (its
own generator, re-seeded per epoch, so a resumed run draws the same batches). The checkpoint, rewritten
atomically after each epoch, holds the weights, the optimizer's momentum and the history; an interrupted
run resumes at the last finished epoch. A checkpoint made for another arch, recipe or data is not resumed.

After the last epoch the BatchNorm running statistics are recomputed over the training split (an exact average,
not the running one): a probe trained for a few dozen steps has running statistics still near their
initial values, and its validation accuracy would then measure that, not the net (on digits after 2 epochs,
an NB201 net read 10% without this). The checkpoint holds the recomputed statistics, so the exported net is
the measured one.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .dataset_profile import check_takes_tasks, source_spec, task_input_hw
from .errors import UserError
from .fanout import Job, as_checkpoint, fan_out
from .fields import check, flag, list_of, number, record, text
from .files import atomic_write_json, check_writable, read_user_bytes, read_user_json
from .profile import announce
from .runs import load_run
from .spaces import get_space
from .userdata import DataOnNodes, load_user_data

CHECKPOINT_KIND = "pomonag-edge/trained-net"


@dataclass(frozen=True)
class Recipe:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    seed: int = 0


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(model, x: np.ndarray, y: np.ndarray, device: str = "cpu", batch_size: int = 512) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode on (x, y)."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i: i + batch_size]).to(device)
            correct += int((model(xb).argmax(1).cpu().numpy() == y[i: i + batch_size]).sum())
    return 100.0 * correct / max(len(x), 1)


def recompute_bn_statistics(model, x: np.ndarray, device: str = "cpu", batch_size: int = 512) -> None:
    """Replace every BatchNorm's running mean and variance by their exact average over ``x``."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches seen
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i: i + batch_size]).to(device))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def train_net(space, arch, data, recipe: Recipe, checkpoint: str | Path | None = None, device: str | None = None,
              progress=None) -> dict:
    """Train ``arch`` on ``data`` (a ``userdata.UserData``); returns ``{arch, accuracy, epochs, seed, ...}``
    with ``accuracy`` the validation top-1 in percent. ``progress(epoch, epochs, loss)`` after each epoch.

    With ``checkpoint`` (a path, or a ``fanout`` checkpoint), the state is saved there after each epoch and a
    matching one is resumed."""
    import torch

    device = pick_device(device)
    identity = {"arch": str(arch), "recipe": asdict(recipe), "data": data.source.get("fingerprint"),
                "num_classes": data.num_classes}
    steps_per_epoch = -(-len(data.x_train) // recipe.batch_size)

    def fresh():
        torch.manual_seed(recipe.seed)
        model = space.build(arch, data).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                              weight_decay=recipe.weight_decay)
        return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * steps_per_epoch)

    model, opt, sched = fresh()
    history: list[dict] = []
    start = 0
    store = as_checkpoint(checkpoint)
    blob = store.load() if store is not None else None
    state = read_checkpoint(blob, device, store) if blob is not None else None
    if state is not None and state.get("identity") == identity:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, start = list(state["history"]), int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # our kind, but not a state of this net
            _discarded(store, f"it does not fit this net ({type(e).__name__}: {str(e)[:120]})")
            model, opt, sched = fresh()
            history, start = [], 0
    x = torch.from_numpy(data.x_train).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(start, recipe.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(recipe.seed * 100003 + epoch))
        total, seen = 0.0, 0
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i: i + recipe.batch_size].to(device)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        entry = {"epoch": epoch + 1, "train_loss": round(total / seen, 5)}
        if epoch + 1 == recipe.epochs:
            recompute_bn_statistics(model, data.x_train, device)
            entry["val_accuracy"] = round(evaluate(model, data.x_val, data.y_val, device), 4)
        history.append({**entry, "seconds": round(time.perf_counter() - t0, 3)})
        if store is not None:
            buf = io.BytesIO()
            torch.save({"kind": CHECKPOINT_KIND, "identity": identity, "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history}, buf)
            store.save(buf.getvalue())
        if progress is not None:
            progress(epoch + 1, recipe.epochs, total / seen)
    final = history[-1]["val_accuracy"]
    return {"arch": str(arch), "accuracy": final, "epochs": recipe.epochs, "seed": recipe.seed, "device": device,
            "seconds": round(sum(h["seconds"] for h in history), 3), "history": history, "model": model.cpu()}


def read_checkpoint(blob: bytes, device: str = "cpu", where=None) -> dict | None:
    """The state in a checkpoint's bytes, or None when they are not a readable pomonag-edge training checkpoint
    (then, with ``where``, a note on stderr says so: that net is trained from its first epoch).

    Read with ``weights_only=True``: tensors and plain values only, never code, so a foreign .pt put in a work
    folder runs nothing. A per-epoch checkpoint is work in progress this tool wrote atomically; one that cannot
    be read (cut short by a full disk or a copy, another tool's file) holds nothing to recover, so it is
    discarded and that net retrained rather than the run refused over a hidden file."""
    import torch

    try:
        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, pickle.UnpicklingError,
            zipfile.BadZipFile) as e:
        if where is not None:
            _discarded(where, f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        if where is not None:
            _discarded(where, "it is not a pomonag-edge training checkpoint")
        return None
    return state


def _discarded(where, why: str) -> None:
    announce(f"note: checkpoint {getattr(where, 'path', where)} is discarded, {why}: that net is trained from its "
             "first epoch")


@dataclass(frozen=True)
class TrainingSetup:
    """What every net of one ``probe`` or ``train`` run is trained with; a fan-out sends it to a cluster once.
    ``data`` is a ``UserData``, or a ``userdata.DataOnNodes`` that each node reads from a path it sees.
    ``threads``: torch's CPU threads per net (None: torch's default here, 1 in a Ray task). On a CPU they are part
    of the result: another count sums in another order, and a few epochs of SGD amplify that."""

    space: str
    data: object
    recipe: Recipe
    device: str | None = None
    threads: int | None = None


def training_setup(space, data, data_path, recipe: Recipe, device=None, threads=None, ray=None) -> TrainingSetup:
    """The setup of a local run, or of a Ray one (``ray``: a ``fanout.RayOptions``): its data sent once through
    the object store, or by path for ``--ray-data shared``; its threads those each task reserved."""
    if ray is not None:
        threads = threads or max(1, int(ray.cpus_per_net))
        if ray.data == "shared":
            data = DataOnNodes(str(Path(data_path).resolve()), data.input_hw, data.source["split"]["seed"],
                               data.source["fingerprint"])
    return TrainingSetup(space.name, data, recipe, device, threads)


def train_job(setup: TrainingSetup, arch: str, checkpoint, progress) -> dict:
    """``fanout``'s unit of work: ``train_net`` of one arch string with the setup's threads; the result (with
    the threads it used) without the model object: the weights are in the checkpoint."""
    import torch

    space = get_space(setup.space)
    data = setup.data.load() if isinstance(setup.data, DataOnNodes) else setup.data
    saved = torch.get_num_threads()
    torch.set_num_threads(setup.threads or saved)
    try:
        result = train_net(space, space.parse(arch), data, setup.recipe, checkpoint=checkpoint, device=setup.device,
                           progress=progress)
        result["threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
    result.pop("model")
    return result


def load_trained_state(path: str | Path, run_dir: str | Path | None = None) -> dict:
    """The weights (a state_dict on the CPU) of a finished training checkpoint. A path recorded relative to where
    ``train`` ran is looked for in ``run_dir``'s train folder too; a missing or unreadable one is one line."""
    path = Path(path)
    if not path.is_file() and run_dir is not None and (Path(run_dir) / TRAIN_DIR / path.name).is_file():
        path = Path(run_dir) / TRAIN_DIR / path.name
    retrain = (f"delete it and run `pomonag-edge train {run_dir or 'RUN'} --data ...` again to train that net "
               "anew, or export with --weights")
    try:
        blob = read_user_bytes(path, "trained weights")
    except UserError as e:
        raise UserError(f"{e}: run `pomonag-edge train {run_dir or 'RUN'} --data ...` again to train that net anew, "
                        "or export with --weights") from None
    state = read_checkpoint(blob)
    if state is None or not isinstance(state.get("model"), dict):
        raise UserError(f"trained weights {path} are not a readable pomonag-edge training checkpoint: {retrain}")
    return state["model"]


# ------------------------------------------------------------------ a run's chosen nets

TRAIN_DIR = "train"
RESULTS_FILE = "results.json"
RESULTS_SCHEMA = "pomonag-edge/trained"
RESULTS_VERSION = 1


@dataclass(frozen=True)
class Task:
    """What a space needs to build a net for trained weights: input resolution and classes."""

    name: str
    input_hw: int
    num_classes: int

    def __str__(self) -> str:
        return self.name


def train_run(run_dir, data_path, top: int = 1, epochs: int = 200, seed: int = 0, progress=None,
              device: str | None = None, threads: int | None = None, ray=None) -> dict:
    """Train the run's ``top`` nets (rank order, within budget) on the data at ``data_path``; checkpoints in
    ``RUN/train/``, measured validation accuracy beside the predicted one in ``RUN/train/results.json``
    (rewritten after each net). A rerun resumes unfinished nets and keeps finished ones. ``threads``: torch's
    per net (``TrainingSetup``). With ``ray`` (a ``fanout.RayOptions``) each net is one Ray task; files are
    written here all the same."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    run = load_run(run_dir)
    space = get_space(run.space)
    check_takes_tasks(space)
    data = load_user_data(data_path, input_hw=task_input_hw(space), seed=seed)
    task = run.task
    if task is not None and task.source.get("classes") and task.num_classes != data.num_classes:
        raise UserError(f"the run was generated for {task.name} ({task.num_classes} classes) but {data_path} holds "
                        f"{data.num_classes}: pass the data the run's dataset profile was made from")
    out = check_writable(Path(run.path) / TRAIN_DIR, "training folder", folder=True)  # before any training
    results_path = check_writable(out / RESULTS_FILE, "training results")
    recipe = Recipe(epochs=epochs, seed=seed)
    old = trained_results(run.path) or {"nets": []}
    same_data = old.get("data", {}).get("fingerprint") == data.source["fingerprint"]
    previous = {n["arch"]: n for n in old["nets"] if same_data and n["recipe"] == asdict(recipe)}
    candidates = [c for c in run.candidates if c.get("feasible", True)][:top]
    if not candidates:
        raise UserError(f"{run.path / 'pareto.json'} holds no net within budget to train")
    same_task, predicted_for = predicted_task_matches(run, data)
    results = {"schema": RESULTS_SCHEMA, "schema_version": RESULTS_VERSION, "run_dir": str(run.path),
               "space": run.space,
               "task": {"name": task.name if task is not None and same_task else data.name,
                        "input_hw": data.input_hw, "num_classes": data.num_classes, "classes": list(data.classes)},
               "predicted_for": predicted_for, "same_task": same_task,
               "data": data.source, "recipe": asdict(recipe), "nets": [], "complete": False}
    setup = training_setup(space, data, data_path, recipe, device, threads, ray)
    nets, jobs, order = {}, [], []
    for position, item in enumerate(candidates, start=1):
        arch = space.parse(item["arch"])
        order.append(str(arch))
        rank = int(item.get("rank") or position)
        ckpt = out / f"{rank:02d}-{hashlib.sha256(str(arch).encode()).hexdigest()[:12]}.pt"
        if str(arch) in previous and Path(previous[str(arch)]["checkpoint"]).is_file():
            nets[str(arch)] = previous[str(arch)]
        else:
            jobs.append((Job(str(arch), f"net {position}/{len(candidates)}", ckpt), rank, item))
    details = {job.key: (rank, item) for job, rank, item in jobs}

    def finished(job, r):
        rank, item = details[job.key]
        nets[job.key] = {"rank": rank, "index": item.get("index"), "arch": job.key,
                         "accuracy_predicted": item.get("accuracy"), "accuracy_predicted_for": predicted_for,
                         "accuracy_measured": r["accuracy"], "split": "validation", "n_val": int(len(data.y_val)),
                         "recipe": asdict(recipe), "checkpoint": str(job.checkpoint), "seconds": r["seconds"],
                         "device": r["device"], "threads": r["threads"], "history": r["history"]}
        results["nets"] = [nets[a] for a in order if a in nets]
        atomic_write_json(results_path, results)

    results["nets"] = [nets[a] for a in order if a in nets]
    fan_out(train_job, setup, [job for job, _, _ in jobs], finished, ray=ray, progress=progress,
            done_before=len(nets))
    results["complete"] = True
    atomic_write_json(results_path, results)
    results["path"] = str(results_path)
    return results


def predicted_task_matches(run, data) -> tuple[bool, str]:
    """(whether the run's predicted accuracies are for ``data``'s task, what they are for). A run generated for a
    shipped dataset predicts that dataset: nets trained on the user's data are measured on another task, and the
    two numbers are not compared. A run of a user task predicts it when the data is the data its profile was
    made from (same content fingerprint, where the profile records one)."""
    if run.task is None:
        return False, str(run.dataset)
    recorded = run.task.source.get("fingerprint")
    if recorded and recorded != data.source.get("fingerprint"):
        return False, f"{run.task.name} (as profiled, from other data than {data.source.get('path')})"
    return True, run.task.name


def _results_spec():
    """The fields of ``RUN/train/results.json`` that ``train`` (resuming) and ``export`` read."""
    net = record({"rank": number(1, integer=True), "arch": text(nonempty=True),
                  "accuracy_predicted": number(0, 100, optional=True), "accuracy_measured": number(0, 100),
                  "split": text(), "n_val": number(0, integer=True), "recipe": record(),
                  "checkpoint": text(nonempty=True), "seconds": number(0, optional=True),
                  "device": text(optional=True), "threads": number(1, integer=True, optional=True),
                  "history": list_of(record())},
                 required=("arch", "accuracy_measured", "split", "n_val", "recipe", "checkpoint"))
    task = record({"name": text(), "input_hw": number(1, integer=True), "num_classes": number(2, integer=True),
                   "classes": list_of(text())}, required=("name", "input_hw", "num_classes"))
    return record({"schema": text((RESULTS_SCHEMA,)), "schema_version": number(1, RESULTS_VERSION, integer=True),
                   "task": task, "predicted_for": text(), "same_task": flag(), "data": source_spec(),
                   "recipe": record(), "nets": list_of(net), "complete": flag()}, required=("task", "nets"))


def trained_results(run_dir) -> dict | None:
    """``RUN/train/results.json`` when the run's nets were trained, else None; every field it is read for is
    checked, and a hand-edited or cut file is one line naming the field."""
    path = Path(run_dir) / TRAIN_DIR / RESULTS_FILE
    if not path.is_file():
        return None
    results = read_user_json(path, "training results")
    check(results, _results_spec(), f"training results {path}", UserError,
          hint="delete it and run `pomonag-edge train` again (finished nets are read back from their checkpoints)")
    return results
