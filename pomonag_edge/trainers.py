"""The one place that gets a measured accuracy for an arch: the built-in recipe on your data, or your pipeline.

    trainer = make_trainer(space, data="digits/", epochs=10, seed=0, workdir=work)        # NB201's recipe
    trainer = make_trainer(space, command="python3 train.py {workdir} --epochs {epochs}", epochs=10, seed=0,
                           workdir=work, timeout_s=3600)                                    # your pipeline
    acc = trainer.measure(arch)          # validation accuracy, percent
    trainer.record(arch)                 # {"arch", "printed", "seconds", "device", ...} of that measurement
    trainer.describe()                   # where the accuracies come from: a dataset profile's ``source``

``BuiltinTrainer`` trains with ``training.train_net`` (checkpointed every epoch in ``workdir``, so an
interrupted net resumes at its last epoch). ``measure`` is ``train`` then ``accept`` (log it): a fan-out
(``fanout``) runs ``train`` of a ``shipped`` trainer on a Ray worker and ``accept`` here. ``CommandTrainer``
runs ``--trainer CMD`` once per net, with ``{arch}``, ``{space}``, ``{epochs}``, ``{seed}``, ``{classes}``,
``{workdir}`` (a folder holding the untrained net: ``state_dict.pt``, a PyTorch state_dict seeded by ``seed``,
and ``arch.txt``) and ``{onnx}`` (that net exported to ONNX) filled in; the last line of its stdout is the
accuracy, in percent or as a fraction. All values of one trainer must be on one scale
(``calibration.accuracy_scale``, as ``calibrate``'s): mixed ones are refused unless ``scale`` says which.

Both append every finished measurement to ``workdir/measured.jsonl`` (``external.ResultLog``) under a key of
what made it (the data's fingerprint and recipe, or the command text with the epochs and seed it uses): a
re-run, or another caller with the same workdir, never trains a finished net again.
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from dataclasses import asdict
from pathlib import Path

from .calibration import accuracy_scale, to_percent
from .dataset_profile import check_takes_tasks, task_input_hw
from .errors import UserError
from .export.onnx_export import export_onnx
from .external import CommandTemplate, ResultLog, result_key, run_for_number
from .fanout import Job, fan_out
from .files import atomic_write_bytes, atomic_write_text, make_dir
from .training import Recipe, Task, train_job, training_setup
from .userdata import load_user_data

TRAINER_PLACEHOLDERS = ("arch", "space", "epochs", "seed", "classes", "workdir", "onnx")
LOG_NAME = "measured.jsonl"


def _net_id(arch) -> str:
    return hashlib.sha256(str(arch).encode()).hexdigest()[:12]


class Trainer:
    """Measures nets once each, logging them; subclasses say how (``train``) and what identifies a result."""

    kind = "trainer"

    def __init__(self, space, workdir, identity: dict, scale: str = "percent"):
        self.space, self.workdir, self.identity, self.given_scale = space, Path(workdir), identity, scale
        self.log = ResultLog(self.workdir / LOG_NAME)
        self.trainer_key = result_key(**identity, space=space.name)  # this trainer's records in a shared log

    def _key(self, arch) -> str:
        return result_key(trainer=self.trainer_key, arch=str(arch))

    def record(self, arch) -> dict | None:
        """The logged measurement of ``arch`` by this trainer (``printed``: the value as it came), or None."""
        return self.log.get(self._key(arch))

    @property
    def scale(self) -> str:
        """"percent" or "fraction": how this trainer's values read, decided over every value it has logged."""
        mine = [r for r in self.log.records() if r.get("trainer_key") == self.trainer_key]
        return accuracy_scale([r["printed"] for r in mine], [f"net {r['arch']}" for r in mine],
                              f"{self.kind}'s accuracies", self.given_scale)

    def measure(self, arch, progress=None) -> float:
        """The accuracy of ``arch`` in percent: logged, or measured now and logged. ``progress(epoch, epochs, loss)``
        after each epoch of built-in training."""
        record = self.record(arch)
        if record is None:
            record = self.accept(arch, *self.train(arch, self.checkpoint_path(arch), progress))
        return to_percent(record["printed"], self.scale)

    def train(self, arch, checkpoint=None, progress=None) -> tuple[float, dict]:
        """Measure ``arch`` now: (the value as printed, what else to log). Nothing is logged here (``accept``
        does that), so a fan-out can run this on another machine. ``checkpoint``: see ``checkpoint_path``."""
        raise NotImplementedError

    def accept(self, arch, printed: float, extra: dict) -> dict:
        """Log a measurement ``train`` made (here or on a worker) and drop the net's checkpoint; its record."""
        record = self.log.add(self._key(arch), {"arch": str(arch), "printed": printed,
                                                "trainer_key": self.trainer_key, **extra})
        if (path := self.checkpoint_path(arch)) is not None:
            path.unlink(missing_ok=True)  # its number is logged; a probe's weights are not needed again
        return record

    def checkpoint_path(self, arch) -> Path | None:
        """Where the training of ``arch`` keeps its per-epoch state here, or None for a trainer that keeps its own."""
        return None

    def shipped(self, ray) -> "Trainer":
        """What a fan-out sends to a cluster (``ray``: a ``fanout.RayOptions``) to run ``train`` there: this trainer
        with an absolute work folder, since a worker's current folder is not this one."""
        twin = copy.copy(self)
        twin.workdir = self.workdir.resolve()
        return twin

    def remember(self, arch, printed: float, **extra) -> None:
        """Log a value this trainer gave before (a measurements CSV's row) unless logged: it is not trained
        again, and it takes part in the scale decision."""
        if self.record(arch) is None:
            self.log.add(self._key(arch), {"arch": str(arch), "printed": float(printed),
                                           "trainer_key": self.trainer_key, **extra})

    def describe(self) -> dict:
        raise NotImplementedError

    def row_key(self) -> dict[str, str]:
        """The measurements CSV's columns that identify this trainer's rows (``probe`` resumes those)."""
        raise NotImplementedError


class BuiltinTrainer(Trainer):
    """NAS-Bench-201's recipe (``training.Recipe``) on the user's images (``userdata.load_user_data``)."""

    kind = "built-in trainer"

    def __init__(self, space, data_path, *, epochs: int, seed: int, workdir, device: str | None = None,
                 threads: int | None = None):
        self.data_path = data_path
        data = load_user_data(data_path, input_hw=task_input_hw(space), seed=seed)
        self.setup = training_setup(space, data, data_path, Recipe(epochs=epochs, seed=seed), device, threads)
        self.recipe = self.setup.recipe
        super().__init__(space, workdir, {"trainer": "built-in", "recipe": asdict(self.recipe),
                                          "data": self.data.source["fingerprint"]})

    @property
    def data(self):
        return self.setup.data

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def epochs(self) -> int:  # as a CommandTrainer says them, so a caller records either the same way
        return self.recipe.epochs

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def checkpoint_path(self, arch) -> Path:
        return self.workdir / f"{_net_id(arch)}.pt"

    def train(self, arch, checkpoint=None, progress=None):
        result = train_job(self.setup, str(arch), checkpoint, progress)
        return result["accuracy"], {"seconds": result["seconds"], "device": result["device"],
                                    "threads": result["threads"]}

    def shipped(self, ray):
        """The data goes with it (Ray's object store, once), or only its path for ``--ray-data shared``; each task
        trains with the threads it reserved."""
        twin = super().shipped(ray)
        twin.setup = training_setup(self.space, self.setup.data, self.data_path, self.recipe, self.setup.device,
                                    self.setup.threads, ray)
        return twin

    def describe(self) -> dict:
        return {**self.data.source, "trainer": {"kind": "built-in", "recipe": "NAS-Bench-201's, cosine schedule "
                                                "scaled to the epochs", **asdict(self.recipe)}}

    def row_key(self) -> dict[str, str]:
        return {"data": self.data.source["fingerprint"], "epochs": str(self.recipe.epochs),
                "seed": str(self.recipe.seed), "trainer": ""}


class CommandTrainer(Trainer):
    """The user's own pipeline, one call per net; it owns its data, so nothing here is about images."""

    kind = "--trainer"

    def __init__(self, space, command: str, *, epochs: int, seed: int, workdir, timeout_s: float | None = None,
                 scale: str = "auto", num_classes: int = 10, name: str = "task"):
        self.template = CommandTemplate.parse(command, TRAINER_PLACEHOLDERS, "--trainer")
        if timeout_s is not None and not timeout_s > 0:
            raise UserError(f"--trainer-timeout must be a positive number of seconds, got {timeout_s:g}")
        if num_classes < 2:
            raise UserError(f"--num-classes must be at least 2, got {num_classes}")
        self.epochs, self.seed, self.timeout_s, self.name = epochs, seed, timeout_s, name
        self.task = Task(name, task_input_hw(space), num_classes)
        used = {k: v for k, v in (("epochs", epochs), ("seed", seed), ("classes", num_classes))
                if k in self.template.used}
        super().__init__(space, workdir, {"trainer": self.template.text, **used}, scale)

    def _prepare(self, arch) -> dict[str, str]:
        """The net's folder (untrained state_dict + arch) and ONNX file, made only when the command uses them."""
        folder = self.workdir / "nets" / _net_id(arch)
        values = {"arch": str(arch), "space": self.space.name, "epochs": str(self.epochs), "seed": str(self.seed),
                  "classes": str(self.task.num_classes), "workdir": str(folder), "onnx": str(folder / "net.onnx")}
        if not self.template.used & {"workdir", "onnx"}:
            return values
        import torch

        make_dir(folder, "trainer work folder")
        torch.manual_seed(self.seed)
        model = self.space.build(arch, self.task).eval()
        if "workdir" in self.template.used and not (folder / "state_dict.pt").is_file():
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            atomic_write_bytes(folder / "state_dict.pt", buf.getvalue())
            atomic_write_text(folder / "arch.txt", f"{arch}\n")
            atomic_write_text(folder / "space.txt", f"{self.space.name}\n")
        if "onnx" in self.template.used and not (folder / "net.onnx").is_file():
            export_onnx(model, self.space.input_shape(arch, self.task, batch=1), folder / "net.onnx")
        return values

    def train(self, arch, checkpoint=None, progress=None):
        """One call of the command (on a Ray worker: on that node, in the same work folder path)."""
        values = self._prepare(arch)
        t0 = time.perf_counter()
        printed = run_for_number(self.template.argv(**values), timeout_s=self.timeout_s, what="--trainer",
                                 item=f"net {arch}", output_dir=self.workdir, timeout_hint=" (--trainer-timeout)")
        return printed, {"seconds": round(time.perf_counter() - t0, 3), "device": None}

    def describe(self) -> dict:
        return {"kind": "trainer command", "num_classes": self.task.num_classes,
                "num_classes_note": "as given (--num-classes): the classifier of the untrained nets handed to the "
                                    "trainer, and the costs",
                "trainer": {"kind": "command", "command": self.template.text, "timeout_s": self.timeout_s,
                            "scale": self.scale, "epochs": self.epochs if "epochs" in self.template.used else None,
                            "seed": self.seed, "seeds": "the untrained nets' initial weights"
                            + (" and the command's {seed}" if "seed" in self.template.used else "")}}

    def row_key(self) -> dict[str, str]:
        return {"trainer": self.template.text, "epochs": str(self.epochs) if "epochs" in self.template.used else "",
                "seed": str(self.seed), "data": ""}


def measure_all(trainer: Trainer, archs, on_measured, ray=None, progress=None, stage: str = "nets",
                noun: str = "net") -> None:
    """``trainer.measure`` of every arch not logged yet, through a fan-out: here in turn, or each one Ray task
    (``ray``: a ``fanout.RayOptions``; the trainer goes to the cluster once, ``shipped``). ``train`` runs where
    the job runs and ``accept`` logs it here; ``on_measured(arch)`` follows each, in this process."""
    archs = [trainer.space.parse(str(a)) for a in archs]
    jobs = [Job(str(a), f"{noun} {i + 1}/{len(archs)}", trainer.checkpoint_path(a))
            for i, a in enumerate(archs) if trainer.record(a) is None]

    def finished(job, measured):
        arch = trainer.space.parse(job.key)
        trainer.accept(arch, *measured)
        on_measured(arch)

    fan_out(_train_job, trainer if ray is None else trainer.shipped(ray), jobs, finished, ray=ray,
            progress=progress, stage=stage, done_before=len(archs) - len(jobs))


def _train_job(trainer: Trainer, arch: str, checkpoint, progress) -> tuple[float, dict]:
    """``fanout``'s unit of work: the trainer's ``train`` of one arch string (here or on a worker)."""
    return trainer.train(trainer.space.parse(arch), checkpoint, progress)


def make_trainer(space, *, command: str | None = None, data=None, epochs: int = 10, seed: int = 0, workdir,
                 device: str | None = None, timeout_s: float | None = None, scale: str = "auto",
                 num_classes: int = 10, name: str = "task", threads: int | None = None) -> Trainer:
    """``command`` (your pipeline) or ``data`` (the built-in recipe on your images), exactly one of them."""
    if (command is None) == (data is None):
        raise UserError("--data and --trainer are two ways to measure accuracy: --data DIR trains with the "
                        "built-in NB201 recipe on your images, --trainer CMD runs your own pipeline (which owns its "
                        "data); give exactly one")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    check_takes_tasks(space)
    if command is not None:
        return CommandTrainer(space, command, epochs=epochs, seed=seed, workdir=workdir, timeout_s=timeout_s,
                              scale=scale, num_classes=num_classes, name=name)
    return BuiltinTrainer(space, data, epochs=epochs, seed=seed, workdir=workdir, device=device, threads=threads)
