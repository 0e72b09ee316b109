"""The DatasetProfile: a versioned JSON record of one task, the accuracy-side twin of a device ``Profile``.

Written by ``probe`` (nets trained here on the user's data) or ``calibrate`` (accuracies measured elsewhere);
read by ``predict``, ``generate``, ``train`` and ``export`` wherever ``--dataset`` takes a path. It holds where
the data came from (counts, classes, input shape, normalisation), the measurements (arch, accuracy, epochs,
seed), the scale the accuracies were given in, and the fitted accuracy model with its cross-validated error.
Accuracies are stored and predicted in percent; ``scale`` says whether the user gave fractions.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .errors import ArchParseError, UserError
from .fields import FieldError, check, flag, list_of, number, record, text
from .files import (atomic_write_json, from_versioned_json, json_sha256, read_user_json, revision_parent_spec,
                    save_revision_json)
from .predictors.accuracy_fewshot import (MODEL_KIND, MODEL_VERSION, FewShotAccuracyModel, fit_fewshot, is_current,
                                          state_spec, supports_tasks)
from .spaces import get_space

SCHEMA = "pomonag-edge/dataset-profile"
SCHEMA_VERSION = 1
DATASETS_DIR = Path("datasets")


class DatasetProfileError(UserError):
    """A dataset profile that is missing, corrupt, foreign, of a newer schema, or of another space."""


def _same_length(a: str, b: str):
    def rule(obj: dict, where: str) -> None:
        if a in obj and b in obj and len(obj[a]) != len(obj[b]):
            raise FieldError(f"{where}.{b}", f"holds {len(obj[b])} item(s) but {where}.{a} {len(obj[a])}")

    return rule


def _measured_count(d: dict, where: str) -> None:
    model, measurements = d.get("accuracy_model"), d.get("measurements", [])
    if is_current(model) and model["n_measurements"] != len(measurements):
        raise FieldError("measurements", f"holds {len(measurements)} item(s) but accuracy_model.n_measurements "
                                         f"says {model['n_measurements']} (the file was cut or edited: "
                                         "rebuild it with `pomonag-edge calibrate` or `probe`)")


def _accuracy_model(state, where: str) -> None:
    """This version's model is checked field by field; another kind or version is refitted, so any object goes."""
    (state_spec() if is_current(state) else record(optional=True))(state, where)


def source_spec():
    """Where a task's measurements came from (``userdata``'s ``source``: counts, classes, input shape,
    normalisation, split; and how probe or calibrate measured it), as a ``fields`` check: a dataset profile's
    ``source`` and a run's train results' ``data``."""
    seed = number(0, integer=True, optional=True)
    count = number(0, integer=True)
    return record({
        "kind": text(), "path": text(), "images": count, "classes": list_of(text(), min_len=2),
        "counts": list_of(count), "num_classes": number(2, integer=True),
        "input_shape": list_of(number(1, integer=True), length=3),
        "normalisation": record({"mean": list_of(number(), length=3), "std": list_of(number(0, above=True), length=3),
                                 "pixel_scale": text(), "computed_on": text()}),
        "split": record({"seed": seed, "val_fraction": number(0, 1, above=True), "stratified": flag(),
                         "n_train": count, "n_val": count}),
        "fingerprint": text(), "measurements": text(), "num_classes_note": text(),
        "probe": record({"probes": count, "epochs": number(1, integer=True, optional=True), "seed": seed,
                         "choice": text(), "measurements_csv": text()}),
    }, rules=(_same_length("classes", "counts"),))


def _spec():
    """Every field of a dataset profile, as written by ``probe`` and ``calibrate`` (``fields.check``)."""
    seed = number(0, integer=True, optional=True)
    count = number(0, integer=True)
    measurement = record({"arch": text(nonempty=True), "accuracy": number(0, 100),
                          "epochs": number(1, integer=True, optional=True), "seed": seed, "source": text(),
                          "repeats": number(1, integer=True), "lines": list_of(count)},
                         required=("arch", "accuracy"))
    return record({"name": text(nonempty=True), "space": text(nonempty=True), "source": source_spec(),
                   "measurements": list_of(measurement), "scale": text(("percent", "fraction")),
                   "features": record(), "accuracy_model": _accuracy_model, "tool_version": text(),
                   "created": text(), "parent": revision_parent_spec()}, rules=(_measured_count,))


@dataclass
class DatasetProfile:
    """One task. ``measurements``: ``[{"arch", "accuracy" (percent), "epochs"?, "seed"?, "source"?}, ...]``;
    ``accuracy_model``: the fitted model's JSON state (``predictors.accuracy_fewshot``)."""

    name: str
    space: str = "nb201"
    source: dict = field(default_factory=dict)  # kind, path, images, classes, counts, input_shape, normalisation, split
    measurements: list[dict] = field(default_factory=list)
    scale: str = "percent"  # how the accuracies were given: "percent" or "fraction" (stored as percent)
    features: dict = field(default_factory=dict)  # data-derived features (none are used yet)
    accuracy_model: dict | None = None
    tool_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    parent: dict | None = None  # a revision's origin: {"path", "name", "sha256"} of the profile it extends

    # -- what a space needs to build and cost a net for this task
    @property
    def num_classes(self) -> int:
        classes = self.source.get("classes")
        if classes:
            return len(classes)
        return int(self.source.get("num_classes") or 10)

    @property
    def input_hw(self) -> int:
        shape = self.source.get("input_shape")
        if shape:
            return int(shape[-1])
        return task_input_hw(get_space(self.space))

    def __str__(self) -> str:
        return self.name

    def accuracy_predictor(self):
        """The task's few-shot accuracy model (``accuracy_model_of``), as ``SearchSpace.accuracy_predictor`` is a
        shipped dataset's: both answer ``predict(archs, dataset)`` in percent and ``describe(dataset)``."""
        return accuracy_model_of(self)

    # -- serialisation
    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **asdict(self)}
        if not d["parent"]:  # absent when unset, so older profiles keep their hash
            del d["parent"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "dataset profile") -> "DatasetProfile":
        hint = " (it is a device profile: pass it as --profile)" if isinstance(d, dict) and \
            d.get("schema") == "pomonag-edge/profile" else ""
        profile = from_versioned_json(cls, d, source, schema=SCHEMA, schema_version=SCHEMA_VERSION,
                                      kind="dataset profile", error=DatasetProfileError, hint=hint)
        check(d, _spec(), source, DatasetProfileError)
        return profile

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    def save_revision(self, parent_path: str | os.PathLike, parent: "DatasetProfile") -> Path:
        """Save as a new file beside ``parent_path`` (``NAME.r2.json``, ...), recording its parent, as a device
        profile's revision does (``files.save_revision_json``)."""
        self.parent = {"path": str(parent_path), "name": parent.name, "sha256": parent.sha256}
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return save_revision_json(parent_path, self.to_dict(), "dataset profile revision", DatasetProfileError)

    @property
    def sha256(self) -> str:
        """Content hash, recorded by runs and exports so a result names the exact profile it used."""
        return json_sha256(self.to_dict())


def load_dataset_profile(path: str | os.PathLike) -> DatasetProfile:
    path = Path(path)
    data = read_user_json(path, "dataset profile", DatasetProfileError)
    return DatasetProfile.from_dict(data, source=f"dataset profile {path}")


def is_profile_path(spec: str) -> bool:
    return os.path.sep in spec or "/" in spec or spec.endswith(".json") or Path(spec).is_file()


def resolve_dataset(spec, space):
    """``--dataset`` as the user gives it: None (the space's default), a shipped dataset's name, or a path to a
    dataset profile of ``space``. Returns the name or the loaded ``DatasetProfile``."""
    if spec is None or isinstance(spec, DatasetProfile):
        return spec or space.default_dataset
    if spec in space.datasets:
        return spec
    if not is_profile_path(spec):
        raise UserError(f"unknown dataset {spec!r} for {space.name}; choose one of {', '.join(space.datasets)} "
                        "or pass a dataset profile (.json) made by `pomonag-edge probe` or `calibrate`")
    profile = load_dataset_profile(spec)
    if profile.space != space.name:
        raise DatasetProfileError(f"dataset profile {spec} is for space {profile.space!r}, not {space.name!r}: "
                                  f"pass --space {profile.space}, or probe/calibrate the task for {space.name}")
    check_takes_tasks(space)
    return check_against_space(profile, space, f"dataset profile {spec}")


def check_against_space(profile: DatasetProfile, space, source: str) -> DatasetProfile:
    """What the field checks cannot know alone: every measured arch is one of ``space`` (the profile's own), and
    its stored model reads tables ``space`` ships. The first that is not is one line naming the field."""
    for i, item in enumerate(profile.measurements):
        try:
            space.parse(item["arch"])
        except ArchParseError as e:
            raise DatasetProfileError(f"{source} is malformed: measurements[{i}].arch: {e}") from None
    if is_current(profile.accuracy_model):
        unknown = [t for t in profile.accuracy_model["tables"] if t not in space.datasets]
        if unknown:
            raise DatasetProfileError(f"{source} is malformed: accuracy_model.tables names {unknown[0]!r}, not a "
                                      f"{space.name} table ({', '.join(space.datasets)})")
    return profile


def check_takes_tasks(space) -> None:
    """A ``DatasetProfileError`` unless ``space`` can take a user task (``accuracy_fewshot.supports_tasks``)."""
    if not supports_tasks(space):
        raise DatasetProfileError(f"the {space.name} space predicts accuracy for {', '.join(space.datasets)} only "
                                  "(no measured tables of several tasks to adapt from): user tasks work with "
                                  "--space nb201")


def task_input_hw(space) -> int:
    """The square input a user task's images are resized to: the space's default dataset's."""
    return int(space.input_shape(None, space.default_dataset)[-1])


def dataset_label(dataset) -> str:
    """How a run, a table or a report names the task: the shipped name or the profile's name."""
    return dataset if isinstance(dataset, str) or dataset is None else dataset.name


def accuracy_model_of(profile: DatasetProfile):
    """The profile's fitted few-shot accuracy model; refitted from its measurements if the stored one is stale."""
    sp = get_space(profile.space)
    state = profile.accuracy_model
    if isinstance(state, dict) and state.get("kind") == MODEL_KIND and state.get("version") == MODEL_VERSION:
        return FewShotAccuracyModel(sp, state)
    archs = [sp.parse(m["arch"]) for m in profile.measurements]
    return fit_fewshot(sp, archs, [float(m["accuracy"]) for m in profile.measurements], task=profile.name)


def refit_accuracy_model(space, profile: DatasetProfile) -> None:
    """Refit ``profile``'s accuracy model on its measurements, with the shipped tables its model was fitted on
    (a revision keeps its prior: a task held out of a table stays held out)."""
    tables = (profile.accuracy_model or {}).get("tables")
    archs = [space.parse(m["arch"]) for m in profile.measurements]
    profile.accuracy_model = fit_fewshot(space, archs, [float(m["accuracy"]) for m in profile.measurements],
                                         datasets=tables, task=profile.name).to_dict()


def fit_dataset_profile(space, measurements: list[dict], name: str, source: dict | None = None,
                        scale: str = "percent") -> DatasetProfile:
    """A dataset profile for ``measurements`` (accuracy in percent), its accuracy model fitted."""
    check_takes_tasks(space)
    profile = DatasetProfile(name=name, space=space.name, source=dict(source or {}), measurements=list(measurements),
                             scale=scale)
    archs = [space.parse(m["arch"]) for m in measurements]
    profile.accuracy_model = fit_fewshot(space, archs, [float(m["accuracy"]) for m in measurements],
                                         task=name).to_dict()
    return profile
