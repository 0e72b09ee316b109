"""Profile files (schema errors, reference profiles), building one with resume, and the CLI's exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli
from pomonag_edge.errors import ProfileError, UserError
from pomonag_edge.hardware.devices import detect_device
from pomonag_edge.hardware.timing import Protocol
from pomonag_edge.profile import SCHEMA_VERSION, Profile, load_profile, reference_profile, resolve_profile
from pomonag_edge.profiler import ProfileRequest, build_profile
from pomonag_edge.spaces.nb201 import SPACE

TINY = Protocol(name="tiny", warmup_ms=0, warmup_runs=1, min_runs=3, min_time_s=0.02, floor_runs=2, retries=0,
                settle_s=0.05)


# ----------------------------------------------------------------------------- files


def test_profile_round_trips(tmp_path):
    p = Profile(name="x", dataset="cifar10", lut={"stem:c16:hw32": {"median_ms": 0.1}},
                calibration=[{"arch": "a", "latency_ms": 1.0}], runtime={"threads": 1})
    path = p.save(tmp_path / "p.json")
    q = load_profile(path)
    assert q == p and q.sha256 == p.sha256


@pytest.mark.parametrize("text, match", [
    ("{not json", "corrupt"),
    ('{"hello": 1}', "not a pomonag-edge profile"),
    ('{"schema": "pomonag-edge/profile", "schema_version": 999, "name": "x"}', "newer"),
    ('{"schema": "pomonag-edge/profile", "schema_version": 1}', "name"),
    ('{"schema": "pomonag-edge/profile", "schema_version": 1, "name": "x", "calibration": [{"arch": "a"}]}',
     "latency_ms"),
])
def test_bad_profile_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match=match) as e:
        load_profile(path)
    assert "\n" not in str(e.value)


def test_missing_profile(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "none.json")
    with pytest.raises(ProfileError, match="no profile found"):
        resolve_profile(None, folder=tmp_path)


def test_reference_profiles():
    from pomonag_edge.data import nb201_latency_tables

    tables = nb201_latency_tables()
    assert len(tables) >= 30
    p = resolve_profile("titanx_256")
    assert p.reference == "titanx_256" and p.runtime["batch"] == 256 and not p.lut
    assert reference_profile("gold_6240").runtime["batch"] == 1  # a CPU's model number is not a batch size
    with pytest.raises(ProfileError, match="devices"):
        reference_profile("no-such-device")


def test_a_profile_of_another_space_is_refused_in_one_message_everywhere():
    from pomonag_edge.predictors import latency_model_for
    from pomonag_edge.calibration import calibrate_profile
    from pomonag_edge.spaces import get_space
    from pomonag_edge.spaces.lut import lut_cost

    mbv3 = get_space("mbv3")
    nb = Profile(name="n", lut={"stem:c16:hw32": {"median_ms": 0.1}}, calibration=[{"arch": "a", "latency_ms": 1.0}])
    message = "profile n is for space nb201, not mbv3: pass --space nb201, or a --profile of space mbv3"
    assert nb.of_space(SPACE) and nb.of_space("nb201") and not nb.of_space(mbv3)
    assert nb.require_space(SPACE) is nb
    for refuse in (lambda: nb.require_space("mbv3"), lambda: lut_cost(mbv3, nb), lambda: latency_model_for(mbv3, nb)):
        with pytest.raises(ProfileError) as e:
            refuse()
        assert str(e.value) == message
    with pytest.raises(ProfileError, match="^profile n is for space nb201, not mbv3: .* or a --base of space mbv3$"):
        calibrate_profile(mbv3, [], "x", base=nb)


# ----------------------------------------------------------------------------- building, interrupting, resuming


class Interrupt:
    """A progress callback that presses Ctrl-C once ``stage`` has ``after`` items done."""

    def __init__(self, stage: str, after: int):
        self.stage, self.after = stage, after

    def __call__(self, stage, done, total, loss=None, detail=None):
        if stage == self.stage and done >= self.after and detail:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_build_interrupt_and_resume(tmp_path):
    out = tmp_path / "cpu.json"
    req = ProfileRequest(device="cpu", calibration=2, out=out, protocol=TINY, seed=1)
    with pytest.raises(KeyboardInterrupt):
        build_profile(req, progress=Interrupt("lut", 3), fit_model=False)
    partial = load_profile(out)
    assert len(partial.lut) == 4 + 2 and partial.calibration == []  # fixed blocks (4 keys) + 2 cell ops
    assert partial.partial  # marked, so it is never chosen as a default

    with pytest.raises(KeyboardInterrupt):
        build_profile(req, progress=Interrupt("calibration", 1), fit_model=False)
    middle = load_profile(out)
    assert set(middle.lut) == set(SPACE.lut_signatures("cifar10")) and len(middle.calibration) == 1
    assert all(middle.lut[k] == v for k, v in partial.lut.items())  # finished entries were kept, not re-measured

    result = build_profile(req, fit_model=False)
    assert result.resumed and result.measured == 1
    done = load_profile(out)
    assert not done.partial and middle.partial
    first, kept = done.calibration[0], middle.calibration[0]
    assert first["arch"] == kept["arch"] and len(done.calibration) == 2
    if first != kept:  # only a noisy timing may be replaced, and only by a quieter one (the re-timing pass)
        assert kept["cv"] > TINY.max_cv and first["cv"] < kept["cv"]
    for item in done.calibration:
        SPACE.parse(item["arch"])
        assert item["latency_ms"] == item["median_ms"] > 0 and item["runs"] >= 2
    assert done.runtime["backend"] == "onnxruntime" and done.runtime["threads"] == 1
    assert done.device["name"] == "cpu" and done.device["cpu_cores"] >= 1

    again = build_profile(req, fit_model=False)  # nothing left to measure
    assert again.measured == 0
    with pytest.raises(UserError, match="threads"):
        build_profile(ProfileRequest(device="cpu", calibration=2, out=out, protocol=TINY, seed=1, threads=2))


def test_no_lut_profile_of_any_device_is_whole_nets_fitted_as_calibrate_does(tmp_path):
    from pomonag_edge.calibration import calibrate_profile

    out = tmp_path / "cpu.json"
    result = build_profile(ProfileRequest(device="cpu", calibration=5, out=out, protocol=TINY, lut=False))
    done = load_profile(out)
    assert done.lut == {} and len(done.calibration) == 5 and done.runtime["lut"] is False
    macs = sorted(SPACE.macs(SPACE.parse(c["arch"])) for c in done.calibration)
    assert macs[0] < macs[-1] / 2  # spread over MACs, not the LUT it lacks
    same = calibrate_profile(SPACE, [{"arch": c["arch"], "latency_ms": c["latency_ms"]} for c in done.calibration],
                             "x")
    assert done.latency_model["kind"] == same.latency_model["kind"] == "embedding-head"
    assert result.model_note is None
    with pytest.raises(UserError, match="per-op table setting"):  # a no-LUT profile is not continued with one
        build_profile(ProfileRequest(device="cpu", calibration=6, out=out, protocol=TINY))


def test_request_errors(tmp_path):
    for req, match in ((ProfileRequest(device="jetson"), "Jetson"), (ProfileRequest(device="gpu"), "NVIDIA GPU"),
                       (ProfileRequest(device="abacus"), "known devices"),
                       (ProfileRequest(space="mbv3", dataset="cifar10"), "dataset 'cifar10' for mbv3"),
                       (ProfileRequest(dataset="mnist"), "dataset"),
                       (ProfileRequest(backend="tensorrt", out=tmp_path / "t.json"), "tensorrt")):
        if req.device == "gpu" and detect_device().get("gpu"):
            continue
        with pytest.raises(UserError, match=match):
            build_profile(req, fit_model=False)


# ----------------------------------------------------------------------------- CLI


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_cli_device_errors_are_one_line_exit_2():
    code, output = run("profile", "--device", "jetson")
    assert code == 2 and output.strip().count("\n") == 0 and "Jetson" in output
    code, output = run("profile", "--device", "toaster")
    assert code == 2 and "cpu, gpu, jetson" in output and output.strip().count("\n") == 0


def test_cli_refuses_corrupt_newer_or_mismatched_profiles(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{oops")
    assert run("profile", "--out", str(path), "--quick")[0] == 2
    path.write_text(json.dumps({"schema": "pomonag-edge/profile", "schema_version": SCHEMA_VERSION + 1, "name": "x"}))
    code, output = run("profile", "--out", str(path), "--quick")
    assert code == 2 and "newer" in output
    facts = detect_device()
    Profile(name="cpu", dataset="cifar10", device={"name": "cpu", **facts},
            runtime={"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 2, "protocol": "quick",
                     "calibration_count": 20, "calibration_seed": 0}).save(path)
    code, output = run("profile", "--out", str(path), "--quick")
    assert code == 2 and "--fresh" in output and "threads" in output


def test_cli_devices_lists_descriptors_and_reference_profiles():
    code, output = run("devices", "--no-detect")
    assert code == 0
    for name in ("cpu", "gpu", "jetson", "titanx_256", "pixel3", "desktop-cpu-core-i7-7820x-fp32"):
        assert name in output


@pytest.mark.slow
def test_cli_quick_profile_writes_a_complete_profile(tmp_path):
    out = tmp_path / "p.json"
    code, output = run("profile", "--device", "cpu", "--space", "nb201", "--quick", "--calibration", "2",
                       "--out", str(out))
    assert code == 0, output
    p = load_profile(out)
    assert set(p.lut) == set(SPACE.lut_signatures("cifar10")) and len(p.calibration) == 2
    assert p.runtime["protocol"] == "quick" and p.runtime["onnxruntime"] and str(out) in output.replace("\n", "")
    # piped, each stage's progress is a line of commands._progress (the bars' labels, no item)
    assert "per-op table: 0/" in output and "calibration nets: 2/2, " in output


def test_cli_ctrl_c_says_how_to_continue(tmp_path, monkeypatch):
    from pomonag_edge.commands import profile as command

    out = tmp_path / "p.json"
    Profile(name="cpu").save(out)

    def interrupted(req, progress=None, fit_model=True):
        progress("lut", 3, 10, detail="x")
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "build_profile", interrupted)
    code, output = run("profile", "--out", str(out))
    assert code == 130 and "run the same command again" in " ".join(output.split())
