"""Nets measured elsewhere, read from a CSV: whole-net timings (``arch,latency_ms``) turned into a device profile
with a fitted latency model, accuracies (``arch,accuracy``) for a dataset profile (``calibrate``, ``probe``)."""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path

from .errors import ArchParseError, ProfileError, UserError
from .files import read_user_text
from .hardware.backends import PRECISIONS
from .predictors import fit_profile_model
from .profile import Profile
from .spaces import other_space_hint

MIN_ROWS = 5
LATENCY_MS_RANGE = (1e-6, 1e7)  # a nanosecond to three hours a forward pass: beyond, a unit or a typo


def csv_rows(space, path: Path, column: str, hint: str = ""):
    """(item, value text, row) of every non-empty row of a CSV with columns ``arch`` and ``column``: ``item`` is
    ``{"arch", column: the value as a float, "_key": canonical arch, "_line"}``, ``row`` the row's stripped texts.
    A bad header, arch or number raises naming its line (then ``hint``); the range of the value is the caller's to
    check. Read by ``calibrate`` and by ``probe`` resuming from its own CSV."""
    text = read_user_text(path, "measurements file", encoding="utf-8-sig")
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (_header(path, lambda: reader.fieldnames) or [])]
    missing = [c for c in ("arch", column) if c not in header]
    if missing:
        raise UserError(f"{path}: header must have columns arch,{column}; missing {', '.join(missing)} "
                        f"(got {','.join(header) or 'nothing'})")
    reader.fieldnames = header
    try:
        yield from _parsed(space, path, column, reader, f"; {hint}" if hint else "")
    except csv.Error as e:  # a NUL byte, a field over the csv module's limit
        raise UserError(f"{path}, line {reader.line_num + 1}: not a readable CSV row ({e})") from None


def _parsed(space, path: Path, column: str, reader: csv.DictReader, hint: str):
    for row in reader:
        line = reader.line_num
        row = {k: (v or "").strip() for k, v in row.items() if k is not None}
        arch_text, value_text = row.get("arch", ""), row.get(column, "")
        if not arch_text and not value_text:
            continue
        try:
            arch = space.parse(arch_text)
        except ArchParseError as e:
            raise UserError(f"{path}, line {line}: {e}{other_space_hint(space.name, arch_text)}{hint}") from None
        try:
            value = float(value_text)
        except ValueError:
            raise UserError(f"{path}, line {line}: {column} {value_text!r} is not a number{hint}") from None
        yield {"arch": str(arch), column: value, "_key": str(space.canonical(arch)), "_line": line}, value_text, row


ROW_INTEGERS = {"epochs": 1, "seed": 0}  # an arch,accuracy row's optional integer columns, and their least values


def row_integers(row: dict, where: str, hint: str = "") -> dict[str, int]:
    """The ``ROW_INTEGERS`` a ``csv_rows`` row gives, as integers (empty ones left out); a bad one raises naming
    ``where`` (then ``hint``)."""
    out = {}
    for key, least in ROW_INTEGERS.items():
        value = row.get(key) or ""
        if not value:
            continue
        try:
            out[key] = int(value)
        except ValueError:
            raise UserError(f"{where}: {key} {value!r} is not an integer{hint}") from None
        if out[key] < least:
            raise UserError(f"{where}: {key} must be at least {least}, got {value!r}{hint}")
    return out


def _header(path: Path, read):
    """The header row ``read()`` parses (a ``DictReader``'s lazy ``fieldnames``, say); a CSV error is one line."""
    try:
        return read()
    except csv.Error as e:
        raise UserError(f"{path}, line 1: not a readable CSV header ({e})") from None


def _distinct(path: Path, items: list[dict], value: str) -> list[dict]:
    """``merge_repeats`` of at least ``MIN_ROWS`` rows, leaving at least ``MIN_ROWS`` distinct nets."""
    if len(items) < MIN_ROWS:
        raise UserError(f"{path}: {len(items)} measurement row(s); calibration needs at least {MIN_ROWS}")
    merged = merge_repeats(items, value)
    if len(merged) < MIN_ROWS:
        raise UserError(f"{path}: {len(items)} rows but only {len(merged)} distinct net(s) (repeated or functionally "
                        f"identical archs count once); calibration needs at least {MIN_ROWS} distinct nets")
    values = {i[value] for i in merged}
    if len(values) == 1:  # any model fits a constant exactly: its "0% error" would say nothing
        raise UserError(f"{path}: all {len(merged)} nets have the same {value} ({values.pop():g}): such measurements "
                        "cannot tell nets apart and no model can be fitted to them (a copied value, or a timer "
                        "coarser than the nets' differences?)")
    return merged


def read_measurements(space, path: str | os.PathLike) -> list[dict]:
    """Rows of ``arch,latency_ms`` as calibration items (repeats merged); the first bad row raises naming its line."""
    path = Path(path)
    items = []
    for item, ms_text, row in csv_rows(space, path, "latency_ms"):
        low, high = LATENCY_MS_RANGE
        if not math.isfinite(item["latency_ms"]) or not low <= item["latency_ms"] <= high:
            raise UserError(f"{path}, line {item['_line']}: latency_ms must be a positive number of milliseconds "
                            f"({low:g} to {high:g}), got {ms_text!r}")
        precision = (row.get("precision") or "").strip().lower()
        if precision:  # an optional column: the precision each net was timed at
            if precision not in PRECISIONS:
                raise UserError(f"{path}, line {item['_line']}: precision {precision!r} is not one of "
                                f"{', '.join(PRECISIONS)}")
            item["precision"] = precision
        items.append(item)
    return _distinct(path, items, "latency_ms")


def measured_precision(path, items: list[dict], declared: str | None, base=None) -> str | None:
    """The one precision of a device profile made from timings: the CSV's ``precision`` column and ``--precision``
    (and the ``--base`` profile's) must agree; None when nothing says (the profile is then taken as fp32)."""
    said = {i["precision"] for i in items if i.get("precision")}
    if len(said) > 1:
        raise UserError(f"{path}: nets timed at several precisions ({', '.join(sorted(said))}); a profile is one "
                        "precision: split the CSV and calibrate one profile each")
    if said and any(not i.get("precision") for i in items):
        raise UserError(f"{path}: the precision column is empty on some rows: fill it on every row, or drop it and "
                        "pass --precision")
    column = next(iter(said), None)
    if declared and column and declared != column:
        raise UserError(f"--precision {declared}, but {path} says its nets were timed at {column}")
    precision = declared or column
    base_precision = (base.runtime.get("precision") or "fp32") if base is not None else None
    if base_precision and precision and precision != base_precision:
        raise UserError(f"the --base profile {base.name!r} was measured at {base_precision}, these timings at "
                        f"{precision}: refine a profile of the same precision")
    return precision


def merge_repeats(items: list[dict], value: str = "latency_ms") -> list[dict]:
    """One item per distinct net: repeated rows of one arch, or of functionally identical archs (the same
    canonical form), become one timing, their median, with ``repeats`` and ``lines`` saying what was merged.
    Repeats would otherwise weigh one net several times and make the model's error look smaller than it is."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["_key"], []).append(item)
    out = []
    for group in groups.values():
        first = {k: v for k, v in group[0].items() if not k.startswith("_")}
        if len(group) > 1:
            first[value] = statistics.median(i[value] for i in group)
            first["repeats"] = len(group)
            first["lines"] = [i["_line"] for i in group]
        out.append(first)
    return out


def calibrate_profile(space, items: list[dict], name: str, base=None, source: str = "",
                      precision: str | None = None):
    """A profile for ``name`` holding ``items`` (plus ``base``'s device facts, LUT and calibration), fitted."""
    if base is not None:
        if base.reference:
            raise ProfileError(f"{base.name!r} is a reference profile (every net already measured): "
                               "calibrate without --base")
        base.require_space(space, flag="--base")
        runtime = dict(base.runtime)
        profile = Profile(name=name, space=base.space, dataset=base.dataset, device=dict(base.device),
                          runtime=runtime, lut=dict(base.lut),
                          calibration=list(base.calibration) + [dict(i, source=source) for i in items])
        profile.runtime["calibrated_from"] = source
    else:
        profile = Profile(name=name, space=space.name, dataset=space.default_dataset,
                          device={"name": name}, runtime={"backend": "measured elsewhere", "calibrated_from": source,
                                                          **({"precision": precision} if precision else {})},
                          calibration=[dict(i, source=source) for i in items])
    profile.latency_model = fit_profile_model(space, profile)  # dispatches on the space (nb201 / mbv3)
    return profile


def measurements_kind(path: str | os.PathLike) -> str:
    """"latency" for a CSV of arch,latency_ms, "accuracy" for arch,accuracy (the header decides)."""
    text = read_user_text(path, "measurements file", encoding="utf-8-sig")
    header = [h.strip() for h in (_header(path, lambda: next(csv.reader(text.splitlines()[:1]), None)) or [])]
    if "accuracy" in header and "latency_ms" not in header:
        return "accuracy"
    return "latency"


ACCURACY_SCALES = ("auto", "percent", "fraction")


def accuracy_scale(values, labels=None, source: str = "accuracies", declared: str = "auto") -> str:
    """The scale accuracies are given on: "fraction" (0..1) or "percent" (0..100). With ``declared`` "auto" it
    is "fraction" when every value is within 0..1, "percent" when none is strictly between 0 and 1, and a mix
    of the two is one ``UserError`` line naming an example of each (``labels``: where each value is, e.g.
    "line 3"): reading 0.7 as 0.7% beside 80% would be silently wrong. A declared scale is checked, not
    guessed (a percent list may hold nets below 1%: chance on 120 classes is 0.83%). Every reader of
    accuracies given on either scale uses this one function."""
    if declared not in ACCURACY_SCALES:
        raise UserError(f"unknown accuracy scale {declared!r}; use {', '.join(ACCURACY_SCALES)}")
    values = [float(v) for v in values]
    labels = list(labels) if labels is not None else [f"value {n}" for n in range(1, len(values) + 1)]
    top = 1.0 if declared == "fraction" else 100.0
    bad = next((n for n, v in enumerate(values) if not math.isfinite(v) or not 0 <= v <= top), None)
    if bad is not None:
        allowed = "a fraction (0..1)" if declared == "fraction" else "a percent (0..100) or a fraction (0..1)" \
            if declared == "auto" else "a percent (0..100)"
        raise UserError(f"{source}, {labels[bad]}: accuracy must be {allowed}, got {values[bad]:g}")
    if declared != "auto":
        return declared
    if all(v <= 1.0 for v in values):
        return "fraction"
    fraction = next((n for n, v in enumerate(values) if 0 < v < 1), None)
    if fraction is not None:
        percent = next(n for n, v in enumerate(values) if v > 1)
        raise UserError(f"{source} mixes scales: {values[fraction]:g} ({labels[fraction]}) reads as a fraction, "
                        f"{values[percent]:g} ({labels[percent]}) as a percent; give every accuracy on one scale, "
                        "or declare it (--accuracy-scale percent if values under 1 are nets below 1%)")
    return "percent"


def read_accuracy_measurements(space, path: str | os.PathLike, scale: str = "auto") -> tuple[list[dict], str]:
    """Rows of ``arch,accuracy`` (optional ``epochs``, ``seed``) as (items with accuracy in percent, scale).

    Higher is better, on either scale (``accuracy_scale``): all values within 0..1 are fractions ("fraction",
    stored x100), all others percent ("percent", each within 0..100); a mix of the two is refused. Repeats of one
    net (or of functionally identical archs) become one measurement, their median (``merge_repeats``). The first
    bad row raises naming its line."""
    path = Path(path)
    items = []
    for item, _, row in csv_rows(space, path, "accuracy"):
        item.update(row_integers(row, f"{path}, line {item['_line']}"))
        items.append(item)
    scale = accuracy_scale([i["accuracy"] for i in items], [f"line {i['_line']}" for i in items], str(path), scale)
    items = _distinct(path, items, "accuracy")
    for i in items:
        i["accuracy"] = to_percent(i["accuracy"], scale)
    return items, scale


def to_percent(value: float, scale: str) -> float:
    """An accuracy given on ``scale`` (``accuracy_scale``'s answer), in percent."""
    return 100.0 * float(value) if scale == "fraction" else float(value)
