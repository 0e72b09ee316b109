"""Hostile inputs and situations: each ends in one line on stderr and exit status 2, never a traceback,
or is handled as stated (runs never overwritten silently, exports never mixed, defaults announced).

Tests run as root, where permissions do not stop writes: unwritable places are a path under an existing
file, /proc and /sys.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.errors import UserError
from pomonag_edge.profile import Profile, default_profile, resolve_profile

NB = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ARCHS = [NB,
         "|nor_conv_1x1~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|",
         "|avg_pool_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_3x3~1|skip_connect~2|",
         "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
         "|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"]


def invoke(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def assert_one_line_exit_2(r, *words):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = r.stderr.rstrip("\n").splitlines()
    said = [line for line in lines if line.startswith(("profile: ", "run: "))]  # a default's announcement
    lines = lines[len(said):]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder with a plain file (to put paths under), text inputs and profiles of both spaces."""
    monkeypatch.chdir(tmp_path)
    return hostile_folder(tmp_path)


def hostile_folder(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "archs.txt").write_text(NB + "\n")
    (tmp_path / "binary.txt").write_bytes(NB.encode()[:10] + b"\xff\xfe\x00junk\n")
    (tmp_path / "utf16.csv").write_bytes("arch,latency_ms\n".encode("utf-16"))
    (tmp_path / "m.csv").write_text("arch,latency_ms\n" + "".join(f"{a},{1 + i / 4}\n" for i, a in enumerate(ARCHS)))
    (tmp_path / "notjson.json").write_text("{not json")
    os.mkfifo(tmp_path / "fifo")
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 8, 8, 3), np.uint8), y=np.arange(20) % 2)
    (tmp_path / "binary.toml").write_bytes((tmp_path / "binary.txt").read_bytes())
    (tmp_path / "calib5.json").write_text('{"schema": "pomonag-edge/profile", "schema_version": 1, "name": "x", '
                                          '"calibration": 5}')
    Profile(name="nb", space="nb201", dataset="cifar10").save(tmp_path / "nb201.json")
    Profile(name="mb", space="mbv3").save(tmp_path / "mbv3.json")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "pareto.json").write_text(json.dumps([{"arch": NB, "feasible": True, "latency_ms": 1.0}]))
    (run / "manifest.json").write_text(json.dumps({"schema": "pomonag-edge/run", "schema_version": 1,
                                                   "space": "nb201", "dataset": "cifar10", "created": "2026-01-01",
                                                   "profile": {"spec": "pixel3"}, "budget": {}}))
    return tmp_path


# ------------------------------------------------------------------ every command, hostile inputs and paths

GEN = ("generate", "--profile", "pixel3", "--strategy", "random", "--samples", "8", "--num", "1")
HOSTILE = [
    # unwritable outputs, refused before any long work
    (GEN + ("--out", "afile/run"), ["afile is a file"]),
    (GEN + ("--out", "afile"), ["it is a file"]),
    (GEN + ("--out", "/proc/run"), ["/proc/run"]),
    (GEN + ("--out", "/sys/run"), ["/sys/run"]),
    (GEN + ("--out", ".", "--force"), ["not a run", "only run folders"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "afile/x.json"), ["afile is a file"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "/proc/x.json"), ["/proc/x.json"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "/sys/x.json"), ["/sys/x.json"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "."), ["is a directory"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "fifo"), ["device, pipe or socket"]),
    (("profile", "--quick", "--calibration", "0", "--out", "afile/p.json"), ["afile is a file"]),
    (("profile", "--quick", "--calibration", "0", "--out", "/proc/p.json"), ["/proc/p.json"]),
    (("profile", "--device", "binary.toml"), ["not UTF-8", "offset 10"]),
    (GEN + ("--out", "x" * 300), ["name is too long"]),
    # names are names
    (("calibrate", "--measurements", "m.csv", "--name", "../escape"), ["plain name"]),
    (("calibrate", "--measurements", "m.csv", "--name", "a/b"), ["plain name"]),
    (("calibrate", "--measurements", "m.csv", "--name", ".hidden"), ["plain name"]),
    # input files: missing, a folder, not UTF-8 (the byte offset named), not JSON
    (("predict", "--archs", "nothere.txt"), ["does not exist"]),
    (("predict", "--archs", "."), ["is a folder"]),
    (("predict", "--archs", "binary.txt"), ["not UTF-8", "offset 10"]),
    (("calibrate", "--measurements", "utf16.csv", "--name", "x"), ["not UTF-8", "offset 0"]),
    (("calibrate", "--measurements", "binary.txt", "--name", "x"), ["not UTF-8"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--base", "notjson.json"), ["not JSON"]),
    (("predict", "--archs", "archs.txt", "--profile", "binary.txt"), ["not UTF-8"]),
    (("predict", "--archs", "archs.txt", "--profile", "notjson.json"), ["not JSON"]),
    (("predict", "--archs", "archs.txt", "--profile", "/proc/none.json"), ["does not exist"]),
    (("predict", "--archs", "archs.txt", "--profile", "calib5.json"), ["malformed", "calibration"]),
    (("export", "runs/r", "--weights", "afile", "--no-measure"), ["cannot read --weights"]),
    (GEN + ("--profile", "afile/p.json"), ["afile/p.json", "is a file"]),
    # another space's profile, by file or by reference name: the hint names the flag
    (("predict", "--archs", "archs.txt", "--profile", "mbv3.json"), ["--space mbv3"]),
    (("predict", "--archs", "archs.txt", "--profile", "v100_1"), ["--space mbv3"]),
    (("predict", "--space", "mbv3", "--archs", "archs.txt"), ["line 1", "an arch of space nb201: pass --space nb201"]),
    (("calibrate", "--space", "mbv3", "--measurements", "m.csv", "--name", "x"), ["pass --space nb201"]),
    (GEN + ("--profile", "mbv3.json"), ["--space mbv3"]),
    (("generate", "--space", "mbv3", "--profile", "nb201.json"), ["--space nb201"]),
    (("calibrate", "--measurements", "m.csv", "--name", "x", "--base", "mbv3.json"), ["--space mbv3"]),
    # runs
    (("export", "nothere"), ["does not exist"]),
    (("export", "afile"), ["is a file"]),
    (("export", "."), ["pareto.json does not exist"]),
    (("export", "runs/r", "--profile", "mbv3.json", "--no-measure"), ["space nb201"]),
    (("export", "runs/r", "--weights", "nothere.pt", "--no-measure"), ["does not exist"]),
    (("devices", "--format", "yaml"), ["Invalid value"]),
    (("nosuch",), ["No such command"]),
    (("generate", "--num", "0"), ["--num", "--help"]),
    (("export", "--top", "x"), ["--top"]),
    (("pretrain", "latency", "--space", "nope"), ["unknown search space"]),
    (("train", "runs/r", "--data", "nothere"), ["does not exist"]),
    (("probe", "--data", "afile"), ["neither a folder"]),
    (("probe", "--data", "d.npz", "--out", "afile/x.json"), ["afile is a file"]),
    (("probe", "--data", "d.npz", "--name", "../x"), ["plain name"]),
    (GEN + ("--dataset", "binary.txt"), ["not UTF-8", "offset 10"]),
]


@pytest.mark.parametrize("args, words", HOSTILE, ids=[" ".join(a[:1] + a[1:][-2:]) for a, _ in HOSTILE])
def test_hostile_input_is_one_line_exit_2(here, args, words):
    r = invoke(*args)
    assert_one_line_exit_2(r, *words)
    assert not list(here.glob("runs/.*")), "a refused run left a staging folder behind"


@pytest.mark.parametrize("name, text", [("manifest.json", "[1, 2]"), ("manifest.json", "{oops"),
                                        ("manifest.json", '{"budget": [1]}'), ("pareto.json", '{"arch": 1}'),
                                        ("pareto.json", "\xff"), ("pareto.json", '[{"arch": "ks=3:e=4"}]')])
def test_corrupt_run_files(here, name, text):
    (here / "runs" / "r" / name).write_text(text, encoding="latin-1")
    assert_one_line_exit_2(invoke("export", "runs/r", "--no-measure"), str(Path("runs/r") / name))


# ------------------------------------------------------------------ text files: BOM and line endings


@pytest.mark.parametrize("encode", [lambda t: t.encode(), lambda t: b"\xef\xbb\xbf" + t.replace("\n", "\r\n").encode(),
                                    lambda t: t.replace("\n", "\r").encode()], ids=["plain", "bom-crlf", "cr"])
def test_utf8_with_or_without_bom_and_any_line_ending(here, encode):
    (here / "a.txt").write_bytes(encode(NB + "\n" + ARCHS[1] + "\n"))
    r = invoke("predict", "--archs", "a.txt", "--format", "json")
    assert r.exit_code == 0, r.output
    assert [row["arch"] for row in json.loads(r.stdout)] == [NB, ARCHS[1]]
    from pomonag_edge.calibration import read_measurements
    from pomonag_edge.spaces import get_space

    (here / "m2.csv").write_bytes(encode((here / "m.csv").read_text()))
    assert len(read_measurements(get_space("nb201"), here / "m2.csv")) == len(ARCHS)


# ------------------------------------------------------------------ runs are never overwritten silently


def test_generate_refuses_an_existing_run_and_force_replaces_it_whole(here):
    out = here / "runs" / "r"
    (out / "export").mkdir()
    (out / "export" / "old.onnx").write_text("an earlier generation")
    assert_one_line_exit_2(invoke(*GEN, "--max-latency", "50ms", "--out", out), "--force", "with its export/")
    assert (out / "export" / "old.onnx").exists()
    r = invoke(*GEN, "--max-latency", "50ms", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pareto.csv", "pareto.json", "pareto.png"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_files_replace_dir_never_mixes(tmp_path):
    from pomonag_edge.files import replace_dir, staging_dir

    final = tmp_path / "x"
    final.mkdir()
    (final / "old").write_text("1")
    staged = staging_dir(final)
    (staged / "new").write_text("2")
    replace_dir(staged, final)
    assert [p.name for p in final.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["x"]


def test_export_replaces_its_folder_whole_and_lists_its_files(here):
    run = here / "runs" / "r"
    pareto = [{"rank": i + 1, "arch": a, "feasible": True, "latency_ms": 1.0} for i, a in enumerate(ARCHS[:2])]
    (run / "pareto.json").write_text(json.dumps(pareto))
    (run / "export").mkdir()
    (run / "export" / "stray.onnx").write_text("from an earlier export")
    r = invoke("export", run, "--top", "2", "--no-measure", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    report = json.loads((run / "export" / "report.json").read_text())
    assert sorted(report["files"]) == sorted(p.name for p in (run / "export").iterdir())
    assert "stray.onnx" not in report["files"] and len(summary["nets"]) == 2
    assert all(Path(n["files"]["onnx"]).parent == run / "export" and Path(n["files"]["onnx"]).exists()
               for n in summary["nets"])
    from rich.console import Console

    from pomonag_edge.export.report import render

    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    render(report | {"path": summary["report"]}, console)
    table = console.export_text().split("\nnote: ")[0].split(" passed, ")[0]  # notes, summary: prose, soft-wrapped
    assert max(len(line) for line in table.splitlines()) <= 80 and "checked" in table
    r = invoke("export", run, "--top", "1", "--no-measure")  # a smaller export leaves no earlier file beside it
    assert r.exit_code == 0, r.output
    assert len(list((run / "export").glob("*.onnx"))) == 1
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ explicit, announced defaults


def _profile(folder: Path, name: str, created: str, **kw) -> Path:
    path = folder / f"{name}.json"
    Profile(name=name, created=created, **kw).save(path)
    return path


def test_default_profile_is_the_newest_finished_one_of_the_space_not_the_newest_file(tmp_path):
    new = _profile(tmp_path, "b", "2026-03-01T00:00:00+0000")
    _profile(tmp_path, "a", "2026-01-01T00:00:00+0000")  # written last: newest by modification time
    _profile(tmp_path, "partial", "2026-05-01T00:00:00+0000", partial=True)
    _profile(tmp_path, "other", "2026-06-01T00:00:00+0000", space="mbv3")
    path, why = default_profile(tmp_path, "nb201")
    assert path == new and "newest finished nb201 profile" in why and "1 partial skipped" in why
    said = []
    assert resolve_profile(None, tmp_path, space="nb201", say=said.append).name == "b"
    assert said[0].startswith(f"profile: {new}") and "--profile chooses another" in said[0]
    with pytest.raises(UserError, match="--space mbv3"):
        default_profile(_only(tmp_path, "other"), "nb201")


def _only(folder: Path, name: str) -> Path:
    sub = folder / f"only-{name}"
    sub.mkdir()
    (sub / f"{name}.json").write_bytes((folder / f"{name}.json").read_bytes())
    return sub


def test_a_partial_profile_is_never_a_default(tmp_path):
    _profile(tmp_path, "cpu", "2026-01-01T00:00:00+0000", partial=True)
    with pytest.raises(UserError, match="partial ones are never chosen"):
        default_profile(tmp_path, "nb201")


def test_generate_announces_the_default_profile_on_its_first_line(here):
    os.mkdir("profiles")
    Profile(name="nb", space="nb201", dataset="cifar10").save("profiles/nb.json")
    r = invoke("generate", "--max-latency", "5ms")  # refused later (no timings), after the choice is said
    assert r.exit_code == 2
    first, error = r.stderr.splitlines()
    assert first.startswith("profile: profiles/nb.json (newest finished nb201 profile"), r.stderr
    assert error.startswith("Error: profile 'nb' has no calibration timings")


def test_profile_revision_records_its_parent_and_keeps_both_writers(tmp_path):
    parent_path = _profile(tmp_path, "cpu", "2026-01-01T00:00:00+0000", space="nb201")
    parent = Profile(name="cpu", created="2026-01-01T00:00:00+0000")
    a = Profile(name="cpu", calibration=[{"arch": NB, "latency_ms": 1.0}]).save_revision(parent_path, parent)
    b = Profile(name="cpu", calibration=[{"arch": NB, "latency_ms": 2.0}]).save_revision(parent_path, parent)
    assert (a.name, b.name) == ("cpu.r2.json", "cpu.r3.json")  # two writers, two revisions: nothing lost
    assert json.loads(a.read_text())["parent"]["path"] == str(parent_path)
    assert "parent" not in json.loads(parent_path.read_text())


# ------------------------------------------------------------------ calibrate: repeated and identical nets


def test_calibrate_refuses_repeats_of_one_net(here):
    (here / "rep.csv").write_text("arch,latency_ms\n" + "".join(f"{NB},{1 + i / 10}\n" for i in range(6)))
    assert_one_line_exit_2(invoke("calibrate", "--measurements", "rep.csv", "--name", "x"), "1 distinct net")


def test_calibrate_merges_functionally_identical_nets():
    from pomonag_edge.calibration import merge_repeats
    from pomonag_edge.spaces import get_space

    sp = get_space("nb201")
    twin = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    dead = "|nor_conv_3x3~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"
    dead_twin = "|nor_conv_1x1~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"  # edge 1 never reaches the output
    assert str(sp.canonical(sp.parse(dead))) == str(sp.canonical(sp.parse(dead_twin)))
    items = [{"arch": a, "latency_ms": ms, "_key": str(sp.canonical(sp.parse(a))), "_line": i}
             for i, (a, ms) in enumerate([(twin, 1.0), (twin, 3.0), (dead, 5.0), (dead_twin, 7.0)], start=2)]
    merged = merge_repeats(items)
    assert [(m["latency_ms"], m["repeats"]) for m in merged] == [(2.0, 2), (6.0, 2)]


# ------------------------------------------------------------------ 80 columns


def test_generate_table_fits_80_columns():
    """Every column whole at 80 columns, the budget verdict included; nets told apart by their table index (NB201's
    arch strings all start alike: cut, they read the same); measured values marked."""
    from rich.console import Console

    from pomonag_edge.commands.generate import render_table

    rows = [{"rank": i + 1, "arch": a, "index": 1000 + i, "accuracy": 93.5, "latency_ms": 12.345, "params": 1_234_567,
             "macs": 123_456_789, "feasible": i % 2 == 0, "p_within_budget": 0.95 if i % 2 == 0 else 0.4,
             "latency_ms_measured": 11.5 if i == 0 else None, "accuracy_measured": None} for i, a in enumerate(ARCHS)]
    for width in (80, 200):
        console = Console(width=width, record=True, file=open(os.devnull, "w"))
        console.print(render_table(rows, None, title="nets", width=width))
        text = console.export_text()
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= width
        header = next(line for line in lines if "P(within budget)" in line)
        assert all(h in header for h in ("#", "index", "accuracy %", "latency ms", "params", "MACs"))
        assert text.count(" 95% ") == 3 and text.count("40% (no)") == 3 and "11.500*" in text
        assert all(str(1000 + i) in text for i in range(len(ARCHS)))
        assert (ARCHS[0] in text) == (width == 200) and "…" not in text  # whole, or left to pareto.csv


def test_devices_never_cuts_the_names_to_type(monkeypatch):
    from pomonag_edge.spaces import get_space, space_names

    monkeypatch.setenv("COLUMNS", "80")
    r = invoke("devices", "--no-detect")
    assert r.exit_code == 0, r.output
    names = [n for s in space_names() for n in get_space(s).reference_devices()] + ["cpu", "gpu", "jetson"]
    cells = {c for line in r.stdout.splitlines() for c in line.split()}  # names hold no spaces
    assert not [n for n in names if n not in cells]
    listing = json.loads(invoke("devices", "--no-detect", "--format", "json").stdout)
    assert {d["name"] for d in listing["descriptors"]} >= {"cpu"} and "nb201" in listing["reference_profiles"]


def test_calibrate_does_not_overwrite_a_profile_without_force(here):
    (here / "mine.json").write_text("a profile someone made")
    assert_one_line_exit_2(invoke("calibrate", "--measurements", "m.csv", "--name", "x", "--out", "mine.json"),
                           "already exists", "--force")
    assert (here / "mine.json").read_text() == "a profile someone made"


@pytest.mark.parametrize("err, words", [(28, "no space left on the disk; free some space"),
                                        (30, "read-only; choose a folder you can write to"),
                                        (13, "permission denied")])
def test_write_failures_say_what_failed_where_and_what_to_do(tmp_path, monkeypatch, err, words):
    from pomonag_edge import files

    def fail(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(UserError) as e:
        files.atomic_write_json(tmp_path / "p.json", {}, "profile")
    assert str(e.value).startswith(f"cannot write profile {tmp_path / 'p.json'}: ") and words in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


# ------------------------------------------------------------------ hand-edited profiles: every field checked

def _task_profile(path: Path) -> dict:
    """A dataset profile fitted to ARCHS (as `calibrate` writes one), saved at ``path``; returns its JSON."""
    from pomonag_edge.dataset_profile import fit_dataset_profile
    from pomonag_edge.spaces import get_space

    measurements = [{"arch": a, "accuracy": 60.0 + 3 * i} for i, a in enumerate(ARCHS)]
    fit_dataset_profile(get_space("nb201"), measurements, "task", source={"num_classes": 10}).save(path)
    return json.loads(path.read_text())


def _model(d):
    return d["accuracy_model"]


DATASET_EDITS = {  # edit of a good dataset profile -> words of the one line
    "head weights are strings": (lambda d: _model(d).update(head=["a"] * len(_model(d)["head"])),
                                 ["accuracy_model.head[0]", "not a number"]),
    "one NaN head weight": (lambda d: _model(d)["head"].__setitem__(1, float("nan")),
                            ["accuracy_model.head[1]", "NaN", "finite"]),
    "an infinite head weight": (lambda d: _model(d)["head"].__setitem__(0, float("inf")),
                                ["accuracy_model.head[0]", "inf"]),
    "head of the wrong length": (lambda d: _model(d).update(head=_model(d)["head"][:2]),
                                 ["accuracy_model.head", "holds 2", "not 5"]),
    "NaN sibling weight": (lambda d: _model(d)["sibling"]["coef"].__setitem__(0, float("nan")),
                           ["accuracy_model.sibling.coef[0]"]),
    "sibling fit missing": (lambda d: _model(d).pop("sibling"), ["accuracy_model.sibling is missing"]),
    "negative y_std": (lambda d: _model(d).update(y_std=-1), ["accuracy_model.y_std", "above 0"]),
    "NaN error": (lambda d: _model(d)["cv"].update(error_points=float("nan")), ["accuracy_model.cv.error_points"]),
    "a table of no space": (lambda d: _model(d).update(tables=["cifar10", "cifar100", "svhn"]),
                            ["accuracy_model.tables", "'svhn'"]),
    "accuracy missing": (lambda d: d["measurements"][0].pop("accuracy"), ["measurements[0].accuracy is missing"]),
    "accuracy a string": (lambda d: d["measurements"][2].update(accuracy="high"), ["measurements[2].accuracy"]),
    "accuracy NaN": (lambda d: d["measurements"][0].update(accuracy=float("nan")), ["measurements[0].accuracy"]),
    "accuracy over 100": (lambda d: d["measurements"][0].update(accuracy=250), ["within 0..100"]),
    "arch not of the space": (lambda d: d["measurements"][1].update(arch="|x~0|"), ["measurements[1].arch"]),
    "fewer measurements than declared": (lambda d: d.update(measurements=d["measurements"][:3]),
                                         ["measurements holds 3", "n_measurements says 6"]),
    "measurements an object": (lambda d: d.update(measurements={}), ["measurements is an object, not a list"]),
    "source a list": (lambda d: d.update(source=[]), ["source is a list"]),
    "classes a number": (lambda d: d["source"].update(classes=5), ["source.classes"]),
    "num_classes text": (lambda d: d["source"].update(num_classes="ten"), ["source.num_classes"]),
    "counts not one per class": (lambda d: d["source"].update(classes=["a", "b"], counts=[3]), ["source.counts"]),
    "input_shape of text": (lambda d: d["source"].update(input_shape=[3, "a", 32]), ["source.input_shape[1]"]),
    "unknown scale": (lambda d: d.update(scale="permille"), ["scale", "percent, fraction"]),
    "name a number": (lambda d: d.update(name=3), ["name is 3, not text"]),
}


def test_the_dataset_profile_a_run_copied_is_checked_too(here):
    d = _task_profile(here / "task.json")
    _model(d)["head"][0] = float("nan")
    (here / "runs" / "r" / "dataset.json").write_text(json.dumps(d))
    assert_one_line_exit_2(invoke("export", "runs/r", "--no-measure"), "runs/r/dataset.json", "head[0]")


def test_a_good_dataset_profile_still_loads_and_predicts(here):
    _task_profile(here / "task.json")
    r = invoke("predict", "--archs", "archs.txt", "--profile", "pixel3", "--dataset", "task.json", "--format", "json")
    assert r.exit_code == 0, r.output
    assert all(np.isfinite(row["accuracy"]) for row in json.loads(r.stdout))


def _device_profile(path: Path) -> dict:
    from pomonag_edge.calibration import calibrate_profile
    from pomonag_edge.spaces import get_space

    items = [{"arch": a, "latency_ms": 1.0 + i / 4} for i, a in enumerate(ARCHS)]
    calibrate_profile(get_space("nb201"), items, "dev").save(path)
    return json.loads(path.read_text())


DEVICE_EDITS = {
    "NaN calibration timing": (lambda d: d["calibration"][0].update(latency_ms=float("nan")),
                               ["calibration[0].latency_ms", "NaN"]),
    "negative calibration timing": (lambda d: d["calibration"][1].update(latency_ms=-1), ["calibration[1]"]),
    "NaN latency model weight": (lambda d: d["latency_model"]["coef"].__setitem__(0, float("nan")),
                                 ["latency_model.coef[0]"]),
    "latency model weight a string": (lambda d: d["latency_model"]["coef"].__setitem__(0, "x"),
                                      ["latency_model.coef[0]", "not a number"]),
    "latency model error a string": (lambda d: d["latency_model"].update(relative_error="x"),
                                     ["latency_model.relative_error"]),
    "LUT entry without a median": (lambda d: d["lut"].update({"stem": {"p90_ms": 1.0}}), ["lut.stem.median_ms"]),
    "partial as text": (lambda d: d.update(partial="no"), ["partial is 'no', not true/false"]),
}


PROFILE_KINDS = {  # how a good one is made, its edits, how predict is given it, how the line names it
    "dataset": (_task_profile, DATASET_EDITS, ("--profile", "pixel3", "--dataset"), "dataset profile bad.json"),
    "device": (_device_profile, DEVICE_EDITS, ("--profile",), "profile bad.json"),
}


@pytest.mark.parametrize("kind, case", [(k, c) for k, (_, edits, _, _) in PROFILE_KINDS.items() for c in edits])
def test_hand_edited_profile_is_one_line_naming_the_field(here, kind, case):
    make, edits, flags, source = PROFILE_KINDS[kind]
    d = make(here / "good.json")
    edit, words = edits[case]
    edit(d)
    (here / "bad.json").write_text(json.dumps(d))
    assert_one_line_exit_2(invoke("predict", "--archs", "archs.txt", *flags, "bad.json"), f"{source} is malformed: ",
                           *words)


# ------------------------------------------------------------------ your data: .npz files and huge images

def _npy_renamed(p):
    np.save(open(p, "wb"), np.zeros((4, 8, 8)))


def _truncated(p):
    np.savez(p, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2)
    p.write_bytes(p.read_bytes()[:300])


def _bad_member_crc(p):
    np.savez(p, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2)
    b = p.read_bytes()
    p.write_bytes(b[:100] + b"\0" * 50 + b[150:])


NPZ = {  # how the .npz is made -> words of the one line
    "empty (savez of nothing)": (lambda p: np.savez(p), ["no array x or y", "holds nothing"]),
    "not a zip file": (lambda p: p.write_text("hello"), ["not an .npz archive", "numpy.savez"]),
    "zero bytes": (lambda p: p.write_bytes(b""), ["is empty"]),
    "an .npy renamed": (_npy_renamed, ["numpy.save (.npy), not an .npz"]),
    "truncated": (_truncated, ["damaged or truncated"]),
    "a damaged member": (_bad_member_crc, ["is damaged", "CRC"]),
    "no y": (lambda p: np.savez(p, x=np.zeros((4, 8, 8))), ["no array y", "holds x"]),
    "object arrays": (lambda p: np.savez(p, x=np.array([np.zeros((8, 8)), np.zeros((4, 4))], dtype=object), y=[0, 1]),
                      ["not Python objects"]),
    "strings as images": (lambda p: np.savez(p, x=np.array(["a"] * 4), y=np.arange(4)), ["x must hold numbers"]),
    "a scalar x": (lambda p: np.savez(p, x=np.float32(3), y=np.arange(4)), ["x has shape ()"]),
    "no images": (lambda p: np.savez(p, x=np.zeros((0, 8, 8)), y=np.zeros(0, int)), ["x holds no image"]),
    "images of 0x0": (lambda p: np.savez(p, x=np.zeros((4, 0, 0)), y=np.arange(4)), ["x holds no image"]),
    "NaN pixels": (lambda p: np.savez(p, x=np.full((4, 8, 8), np.nan, np.float32), y=np.arange(4)), ["NaN"]),
    "floats beyond 0..1": (lambda p: np.savez(p, x=np.full((4, 8, 8), 255.0), y=np.arange(4)), ["0..1"]),
    "16-bit integers": (lambda p: np.savez(p, x=np.full((4, 8, 8), 1000, np.int16), y=np.arange(4)), ["0..255"]),
    "labels as strings": (lambda p: np.savez(p, x=np.zeros((4, 8, 8)), y=np.array(list("abab"))), ["y must be"]),
}


@pytest.mark.parametrize("case", list(NPZ))
def test_bad_npz_is_one_line(here, case):
    make, words = NPZ[case]
    make(here / "bad.npz")
    assert_one_line_exit_2(invoke("probe", "--data", "bad.npz"), "bad.npz", *words)


def _png_header(path: Path, w: int, h: int) -> None:
    """A PNG that claims ``w`` x ``h`` pixels and holds none: Pillow reads the size from the header alone."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side, size", [(13_000, "13000x13000 (169 megapixels)"), (20_000, "400 megapixels")])
def test_a_decompression_bomb_refuses_the_folder_in_one_line(here, side, size):
    """13,000 squared is over Pillow's warning limit (it would decode 0.5 GB, warning once), 20,000 squared over
    its error limit: both are one line naming the image, and nothing is decoded."""
    from PIL import Image

    for c in "ab":
        (here / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(here / "imgs" / c / f"{i}.png")
    _png_header(here / "imgs" / "a" / "huge.png", side, side)
    r = invoke("probe", "--data", "imgs")
    assert_one_line_exit_2(r, "imgs/a/huge.png", size, "decompression bomb", "refused")
    assert "Warning" not in r.output


def test_the_image_size_limit_is_the_codes_own_knob(tmp_path, monkeypatch):
    from PIL import Image

    from pomonag_edge import userdata

    for c in "ab":
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16)).save(tmp_path / c / f"{i}.png")
    assert userdata.load_user_data(tmp_path).source["images"] == 4
    monkeypatch.setattr(userdata, "MAX_IMAGE_PIXELS", 255)
    with pytest.raises(userdata.DataError, match="16x16"):
        userdata.load_user_data(tmp_path)


# ------------------------------------------------------------------ seeds: 0 <= seed < 2**32 everywhere

SEEDED = [("generate",), ("probe", "--data", "d.npz"), ("train", "runs/r", "--data", "d.npz"),
          ("profile", "--quick"), ("export", "runs/r"), ("pretrain", "latency"), ("pretrain", "accuracy"),
          ("pretrain", "generator")]


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1180591620717411303424"])
@pytest.mark.parametrize("command", SEEDED, ids=[" ".join(c[:2]) for c in SEEDED])
def test_seed_out_of_range_is_one_line(here, command, seed):
    assert_one_line_exit_2(invoke(*command, "--seed", seed), "--seed", "0<=x<=4294967295")


def test_every_seed_option_takes_the_full_range_and_says_it():
    import click

    from pomonag_edge.commands.options import SEED

    ctx = click.Context(cli)

    def commands(group, path=()):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                yield from commands(cmd, path + (name,))
            else:
                yield path + (name,), cmd

    seeded = {path: p for path, cmd in commands(cli) for p in cmd.params if p.name == "seed"}
    assert set(seeded) == {c[:2] if c[0] == "pretrain" else c[:1] for c in SEEDED}  # a new one: add it above
    for path, param in seeded.items():
        assert param.type is SEED, path
    assert (SEED.min, SEED.max) == (0, 2**32 - 1)
    assert "0<=x<=4294967295" in invoke("generate", "--help").output


def test_the_largest_seed_runs(here):
    r = invoke(*GEN, "--max-latency", "50ms", "--seed", 2**32 - 1, "--out", "runs/big")
    assert r.exit_code == 0, r.output
    assert json.loads((here / "runs" / "big" / "manifest.json").read_text())["seed"] == 2**32 - 1


# ------------------------------------------------------------------ the other readers of the your-data path

def _probe_csv(here: Path, rows=None) -> tuple[Path, list[str]]:
    """p/t.csv as a finished `probe --data d.npz --probes 5 --epochs 1` leaves it (nothing left to train)."""
    from pomonag_edge.predictors.accuracy_fewshot import choose_probes
    from pomonag_edge.probe import CSV_FIELDS
    from pomonag_edge.spaces import get_space
    from pomonag_edge.userdata import load_user_data

    fingerprint = load_user_data(here / "d.npz", input_hw=32).source["fingerprint"]
    archs = [str(a) for a in choose_probes(get_space("nb201"), 5, 0)]
    lines = [",".join(CSV_FIELDS)] + [f"{a},{50 + 5 * i},1,0,{fingerprint},1.0,cpu,,{50 + 5 * i}"
                                      for i, a in enumerate(archs)]
    (here / "p").mkdir(exist_ok=True)
    (here / "p" / "t.csv").write_text("\n".join(lines) + "\n")
    return here / "p" / "t.csv", lines


PROBE = ("probe", "--data", "d.npz", "--probes", "5", "--epochs", "1", "--out", "p/t.json")


def test_probe_resumes_from_its_csv_without_training(here):
    _probe_csv(here)
    r = invoke(*PROBE)
    assert r.exit_code == 0, r.output
    assert len(json.loads((here / "p" / "t.json").read_text())["measurements"]) == 5


CSV_EDITS = {  # edit of the finished CSV's lines -> words of the one line
    "epochs not a number": (lambda ls: ls.__setitem__(2, ls[2].replace(",1,0,", ",ten,0,", 1)),
                            ["line 3", "epochs 'ten' is not an integer", "fix or delete"]),
    "accuracy not a number": (lambda ls: ls.__setitem__(1, ls[1].replace(",50,", ",high,", 1)),
                              ["line 2", "accuracy 'high' is not a number"]),
    "accuracy NaN": (lambda ls: ls.__setitem__(4, ls[4].replace(",65,", ",nan,", 1)), ["line 5", "accuracy 'nan'"]),
    "printed over 100": (lambda ls: ls.__setitem__(1, ls[1].rsplit(",", 1)[0] + ",500"), ["printed '500'"]),
    "a bad arch": (lambda ls: ls.__setitem__(3, "|x~0|" + ls[3][ls[3].index(","):]), ["line 4", "NB201 arch"]),
    "columns missing": (lambda ls: ls.__setitem__(slice(None), ["arch,accuracy"] + [",".join(line.split(",")[:2])
                                                                                    for line in ls[1:]]),
                        ["not a probe measurements CSV", "data", "move it away"]),
}


@pytest.mark.parametrize("case", list(CSV_EDITS))
def test_hand_edited_probe_csv_is_one_line_and_kept(here, case):
    path, lines = _probe_csv(here)
    edit, words = CSV_EDITS[case]
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    assert_one_line_exit_2(invoke(*PROBE), "p/t.csv", *words)
    assert path.read_text() == "\n".join(lines) + "\n"  # not replaced


def test_probe_csv_not_utf8_is_one_line(here):
    path, _ = _probe_csv(here)
    path.write_bytes(b"arch,accuracy\n\xff\xfe\n")
    assert_one_line_exit_2(invoke(*PROBE), "p/t.csv", "not UTF-8")


def _trained_run(here: Path) -> dict:
    """runs/r as `train` leaves it: results.json and one finished checkpoint (of an untrained net)."""
    import torch

    from pomonag_edge.spaces import get_space
    from pomonag_edge.training import CHECKPOINT_KIND, Task

    model = get_space("nb201").build(get_space("nb201").parse(NB), Task("d", 32, 2))
    ckpt = here / "runs" / "r" / "train" / "01-net.pt"
    ckpt.parent.mkdir()
    torch.save({"kind": CHECKPOINT_KIND, "identity": {}, "epoch": 1, "model": model.state_dict()}, ckpt)
    results = {"schema": "pomonag-edge/trained", "schema_version": 1, "run_dir": "runs/r", "space": "nb201",
               "task": {"name": "d", "input_hw": 32, "num_classes": 2}, "data": {"fingerprint": "f"}, "recipe": {},
               "nets": [{"rank": 1, "arch": NB, "accuracy_predicted": None, "accuracy_measured": 75.0,
                         "split": "validation", "n_val": 4, "recipe": {}, "checkpoint": str(ckpt)}],
               "complete": True}
    (ckpt.parent / "results.json").write_text(json.dumps(results))
    return results


def test_export_of_a_trained_run_reads_its_weights(here):
    _trained_run(here)
    r = invoke("export", "runs/r", "--no-measure")
    assert r.exit_code == 0, r.output
    net = json.loads((here / "runs" / "r" / "export" / "report.json").read_text())["nets"][0]
    assert (net["weights"], net["accuracy_measured"]) == ("trained", 75.0)


RESULTS_EDITS = {
    "nets not a list": (lambda d: d.update(nets={}), ["nets is an object, not a list"]),
    "accuracy a string": (lambda d: d["nets"][0].update(accuracy_measured="75%"), ["nets[0].accuracy_measured"]),
    "accuracy NaN": (lambda d: d["nets"][0].update(accuracy_measured=float("nan")), ["NaN"]),
    "checkpoint missing": (lambda d: d["nets"][0].pop("checkpoint"), ["nets[0].checkpoint is missing"]),
    "task without classes": (lambda d: d["task"].pop("num_classes"), ["task.num_classes is missing"]),
    "input size as text": (lambda d: d["task"].update(input_hw="32"), ["task.input_hw"]),
    "a newer schema": (lambda d: d.update(schema_version=2), ["schema_version is 2"]),
    "a foreign file": (lambda d: d.update(schema="something/else"), ["schema is 'something/else'"]),
    "normalisation of text": (lambda d: d["data"].update(normalisation={"mean": ["a"] * 3, "std": [1] * 3}),
                              ["data.normalisation.mean[0]"]),
}


@pytest.mark.parametrize("case", list(RESULTS_EDITS))
def test_hand_edited_train_results_are_one_line(here, case):
    results = _trained_run(here)
    edit, words = RESULTS_EDITS[case]
    edit(results)
    (here / "runs" / "r" / "train" / "results.json").write_text(json.dumps(results))
    for args in (("export", "runs/r", "--no-measure"), ("train", "runs/r", "--data", "d.npz", "--epochs", "1")):
        assert_one_line_exit_2(invoke(*args), "training results runs/r/train/results.json is malformed", *words,
                               "delete it and run `pomonag-edge train` again")


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _foreign(path: Path) -> None:
    import torch

    torch.save({"weights": [1, 2, 3]}, path)


def _code(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(print, protocol=2))  # unpickling would call code: weights_only refuses it


@pytest.mark.parametrize("spoil", [_cut, _foreign, _code, lambda p: p.unlink()], ids=["cut", "foreign", "code", "gone"])
def test_a_spoiled_trained_checkpoint_is_one_line_on_export(here, spoil):
    _trained_run(here)
    spoil(here / "runs" / "r" / "train" / "01-net.pt")
    assert_one_line_exit_2(invoke("export", "runs/r", "--no-measure"), "runs/r/train/01-net.pt")


def test_a_trained_checkpoint_is_found_in_the_run_when_train_ran_elsewhere(here):
    results = _trained_run(here)
    results["nets"][0]["checkpoint"] = "/elsewhere/runs/r/train/01-net.pt"
    (here / "runs" / "r" / "train" / "results.json").write_text(json.dumps(results))
    r = invoke("export", "runs/r", "--no-measure")
    assert r.exit_code == 0, r.output
    assert json.loads((here / "runs" / "r" / "export" / "report.json").read_text())["nets"][0]["weights"] == "trained"


@pytest.mark.parametrize("spoil", [_cut, _foreign, _code], ids=["cut", "foreign", "code"])
def test_an_unreadable_epoch_checkpoint_is_discarded_with_a_note(tmp_path, capsys, spoil):
    """An interrupted probe's or train's per-epoch checkpoint that cannot be read is work in progress with
    nothing to recover: the net is trained from its first epoch, and stderr says why."""
    from pomonag_edge.fanout import FileCheckpoint
    from pomonag_edge.training import read_checkpoint

    path = tmp_path / "net.pt"
    _foreign(path)
    spoil(path)
    assert read_checkpoint(path.read_bytes(), where=FileCheckpoint(path)) is None
    note = capsys.readouterr().err
    assert note.startswith(f"note: checkpoint {path} is discarded") and "trained from its first epoch" in note


def _latencies(first: float) -> str:
    return "arch,latency_ms\n" + "".join(f"{a},{first if i == 0 else i}\n" for i, a in enumerate(ARCHS))


CALIBRATE_CSVS = {  # a measurements CSV -> words of the one line
    "a field over the csv limit": ("arch,latency_ms\n" + "x" * 200_000 + ",1\n", ["line 2", "field limit"]),
    "a header over the csv limit": ("x" * 200_000 + ",latency_ms\n", ["line 1", "not a readable CSV header"]),
    "a latency of 1e-320 ms": (_latencies(1e-320), ["line 2", "1e-06 to 1e+07"]),
    "a latency of 1e308 ms": (_latencies(1e308), ["line 2", "1e+308"]),
    "epochs below 1": ("arch,accuracy,epochs\n" + "".join(f"{a},{50 + i},{-5 if i == 2 else 3}\n"
                                                          for i, a in enumerate(ARCHS)), ["line 4", "epochs", "-5"]),
    "a negative seed": ("arch,accuracy,seed\n" + "".join(f"{a},{50 + i},{-1 if i == 0 else 0}\n"
                                                         for i, a in enumerate(ARCHS)), ["line 2", "seed", "-1"]),
}


@pytest.mark.parametrize("case", list(CALIBRATE_CSVS))
def test_hostile_calibrate_csv_is_one_line(here, case):
    text, words = CALIBRATE_CSVS[case]
    (here / "c.csv").write_text(text)
    assert_one_line_exit_2(invoke("calibrate", "--measurements", "c.csv", "--name", "x"), "c.csv", *words)


def test_every_field_of_both_profile_kinds_is_declared():
    """A field added to a profile without a check would be read back unchecked: declare it in ``_spec``."""
    from pomonag_edge import dataset_profile, profile

    for module, cls in ((profile, profile.Profile), (dataset_profile, dataset_profile.DatasetProfile)):
        assert set(cls.__dataclass_fields__) <= set(module._spec().fields), cls.__name__
