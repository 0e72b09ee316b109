"""The run folder (``pomonag_edge.runs``): its manifest checked on read, the run's profile found by the path the
manifest records (the old hash search only when that file changed or was never recorded), and run folders
written before the path was recorded still read. ``data/run_v1`` is a run as pomonag-edge 9f14415 wrote it
(``generate --profile pixel3 --dataset cifar100 --max-latency 5ms``)."""

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pomonag_edge import runs
from pomonag_edge.cli import cli
from pomonag_edge.profile import Profile, load_profile
from pomonag_edge.runs import load_run, profile_spec_for

OLD_RUN = Path(__file__).parent / "data" / "run_v1"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [line for line in r.stderr.splitlines() if not line.startswith(("profile: ", "run: "))]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.stderr
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(OLD_RUN, tmp_path / "runs" / "r")
    return tmp_path


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def save_manifest(run: Path, manifest: dict) -> None:
    (run / "manifest.json").write_text(json.dumps(manifest))


def a_profile(path: Path, name: str = "cpu") -> Profile:
    profile = Profile(name=name, space="nb201", dataset="cifar100", runtime={"backend": "onnxruntime"})
    profile.save(path)
    return profile


# ------------------------------------------------------------------ the manifest is checked


@pytest.mark.parametrize("change, words", [
    (lambda m: {**m, "schema": "someone-else/run"}, ["is not a pomonag-edge run manifest", "schema tag"]),
    (lambda m: {k: v for k, v in m.items() if k != "schema"}, ["is not a pomonag-edge run manifest"]),
    (lambda m: {**m, "schema_version": runs.SCHEMA_VERSION + 1}, ["newer than this pomonag-edge", "upgrade"]),
    (lambda m: {**m, "schema_version": "1"}, ["invalid schema_version"]),
])
def test_a_foreign_or_newer_manifest_is_one_line_exit_2(here, change, words):
    run = here / "runs" / "r"
    save_manifest(run, change(manifest_of(run)))
    for args in (("export", "runs/r", "--no-measure"), ("train", "runs/r", "--data", "nothere")):
        line = one_error_line(invoke(*args))
        assert str(Path("runs/r/manifest.json")) in line and all(w in line for w in words), line


def test_a_corrupt_manifest_is_one_line_exit_2(here):
    (here / "runs" / "r" / "manifest.json").write_text('{"schema": "pomonag-edge/run", "schema_vers')
    line = one_error_line(invoke("export", "runs/r", "--no-measure"))
    assert "runs/r/manifest.json is corrupt (not JSON" in line


def test_the_run_module_reads_back_what_it_writes(tmp_path):
    run = runs.Run(path=tmp_path / "r", candidates=json.loads((OLD_RUN / "pareto.json").read_text()),
                   manifest=manifest_of(OLD_RUN))
    runs.write_run(run, b"\x89PNG")
    back = load_run(tmp_path / "r")
    assert back.candidates == run.candidates and back.manifest == run.manifest and back.task is None
    assert (back.space, back.dataset, back.budget["max_latency_ms"]) == ("nb201", "cifar100", 5.0)
    with open(tmp_path / "r" / "pareto.csv") as f:
        assert f.read() == (OLD_RUN / "pareto.csv").read_text()  # as 9f14415 wrote it, byte for byte


# ------------------------------------------------------------------ old run folders still read


def test_an_old_run_folder_exports(here):
    r = invoke("export", "runs/r", "--no-measure", "--top", "1")
    assert r.exit_code == 0, r.output
    assert "profile: pixel3 (the one runs/r was generated with" in r.stderr
    report = json.loads((here / "runs" / "r" / "export" / "report.json").read_text())
    assert report["profile"]["run_profile_sha256"] == "9d6e7ae88501c255" and report["nets"][0]["status"] == "checked"


def test_an_old_run_of_the_default_profile_finds_it_by_its_hash(here, monkeypatch):
    """Written before the manifest recorded the path: the profile in ./profiles of the recorded hash is found."""
    (here / "profiles").mkdir()
    a_profile(here / "profiles" / "a-other.json", "other")
    profile = a_profile(here / "profiles" / "cpu.json")
    run = here / "runs" / "r"
    m = manifest_of(run)
    m["profile"] = {"spec": None, "name": "cpu", "sha256": profile.sha256, "reference": None, "parent": None}
    save_manifest(run, m)
    assert load_run(run).profile_path is None
    assert Path(profile_spec_for(load_run(run))) == Path("profiles/cpu.json")
    r = invoke("export", "runs/r", "--no-measure", "--top", "1")
    assert r.exit_code == 0, r.output
    assert "found by its hash" in r.stderr


# ------------------------------------------------------------------ the recorded path


def test_generate_records_the_profile_path_and_export_uses_it_without_rehashing(here, monkeypatch, capsys):
    lines = "".join(f"{row['arch']},{1.0 + i / 8}\n" for i, row in enumerate(json.loads(
        (OLD_RUN / "pareto.json").read_text())))
    (here / "m.csv").write_text("arch,latency_ms\n" + lines)
    r = invoke("calibrate", "--space", "nb201", "--measurements", "m.csv", "--name", "phone", "--out", "phone.json")
    assert r.exit_code == 0, r.output
    r = invoke("generate", "--profile", "phone.json", "--max-latency", "50ms", "--strategy", "random",
               "--samples", "16", "--num", "2", "--out", "runs/new")
    assert r.exit_code == 0, r.output
    record = manifest_of(here / "runs" / "new")["profile"]
    assert record["path"] == str(here / "phone.json") and record["spec"] == "phone.json"
    assert record["sha256"] == load_profile(here / "phone.json").sha256

    def no_search(*args):
        raise AssertionError("the profile was searched for by hash though the recorded file still holds it")

    monkeypatch.setattr(runs, "find_profile_by_hash", no_search)
    assert profile_spec_for(load_run(here / "runs" / "new")) == "phone.json"  # named as --profile named it
    assert "profile: phone.json (the one" in capsys.readouterr().err
    elsewhere = here / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # phone.json is not found from here: the recorded path finds it
    assert profile_spec_for(load_run(here / "runs" / "new")) == str(here / "phone.json")
    assert f"profile: {here / 'phone.json'} (the one" in capsys.readouterr().err


def test_a_changed_recorded_file_falls_back_to_the_hash_search(here, monkeypatch):
    (here / "profiles").mkdir()
    profile = a_profile(here / "profiles" / "cpu.json")
    shutil.copy(here / "profiles" / "cpu.json", here / "cpu-copy.json")
    run = here / "runs" / "r"
    m = manifest_of(run)
    m["profile"] = {"spec": None, "name": "cpu", "sha256": profile.sha256, "reference": None, "parent": None,
                    "path": str(here / "profiles" / "cpu.json")}
    save_manifest(run, m)
    profile.calibration = [{"arch": json.loads((OLD_RUN / "pareto.json").read_text())[0]["arch"], "latency_ms": 2.0}]
    profile.save(here / "profiles" / "cpu.json")  # the recorded file has gained a timing: no longer the run's
    shutil.copy(here / "cpu-copy.json", here / "profiles" / "cpu-as-generated.json")
    searched = []
    search = runs.find_profile_by_hash
    monkeypatch.setattr(runs, "find_profile_by_hash", lambda *a: searched.append(a) or search(*a))
    assert Path(profile_spec_for(load_run(run))) == Path("profiles/cpu-as-generated.json") and len(searched) == 1
    os.remove(here / "profiles" / "cpu-as-generated.json")  # gone: the file of its name, said so
    assert Path(profile_spec_for(load_run(run))) == Path("profiles/cpu.json")
