"""Real images end to end: scikit-learn's digits as an image folder (conftest's ``digits_folder``) -> probe ->
generate -> train -> export, and the exported ONNX file's accuracy on the validation split equals the one
report.json states."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pomonag_edge.cli import cli

def _ok(args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.slow
def test_probe_generate_train_export_on_digits(digits_folder, tmp_path, monkeypatch):
    import onnxruntime as ort
    import torch

    from pomonag_edge.userdata import load_user_data

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    dprof = tmp_path / "dg.json"
    _ok(["probe", "--data", digits_folder, "--probes", 5, "--epochs", 1, "--out", dprof])
    d = json.loads(dprof.read_text())
    assert len(d["measurements"]) == 5 and d["source"]["classes"] == [str(i) for i in range(10)]
    measured = (tmp_path / "dg.csv").read_text()
    assert measured.startswith("arch,accuracy,epochs,seed")
    again = _ok(["probe", "--data", digits_folder, "--probes", 5, "--epochs", 1, "--out", dprof])
    # finished probes are kept, not retrained: a retrained probe would record another training time
    assert (tmp_path / "dg.csv").read_text() == measured and "5 probes" in again.output
    assert json.loads(dprof.read_text())["measurements"] == d["measurements"]

    run = tmp_path / "run"
    _ok(["generate", "--dataset", dprof, "--profile", "pixel3", "--max-params", "0.5M", "--num", 2,
         "--samples", 128, "--out", run])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dataset"] == "digits" and manifest["dataset_profile"]["num_classes"] == 10
    assert "few-shot" in manifest["predictors"]["accuracy"] and (run / "dataset.json").is_file()

    _ok(["train", run, "--data", digits_folder, "--top", 1, "--epochs", 1])
    trained = json.loads((run / "train" / "results.json").read_text())
    assert trained["complete"] and len(trained["nets"]) == 1

    _ok(["export", run, "--top", 1, "--no-measure"])
    report = json.loads((run / "export" / "report.json").read_text())
    net = report["nets"][0]
    assert net["weights"] == "trained" and net["status"] == "checked"
    assert net["accuracy_measured"] == trained["nets"][0]["accuracy_measured"]

    data = load_user_data(digits_folder, input_hw=32, seed=0)  # the same seeded split train used
    session = ort.InferenceSession(net["files"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preds = [int(session.run(None, {name: x[None]})[0].argmax()) for x in data.x_val]
    onnx_accuracy = 100.0 * float(np.mean(np.array(preds) == data.y_val))
    assert abs(onnx_accuracy - net["accuracy_measured"]) < 1e-3, (onnx_accuracy, net["accuracy_measured"])
