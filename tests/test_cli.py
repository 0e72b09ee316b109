"""The CLI as a user meets it: help, version, predict, and one-line errors with exit status 2."""

import csv
import io
import subprocess
import sys

from click.testing import CliRunner

from pomonag_edge import __version__
from pomonag_edge.cli import COMMANDS, cli
from pomonag_edge.spaces import get_space

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


def test_help_lists_every_command_and_each_loads():
    r = run("--help")
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.output and COMMANDS[name][:20] in r.output
        assert cli.get_command(None, name) is not None


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_help_does_not_import_torch():
    code = ("import sys; from pomonag_edge.cli import cli; cli(['--help'], standalone_mode=False); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_predict_exact_costs_from_stdin():
    S = get_space("nb201")
    r = run("predict", "--space", "nb201", "--archs", "-", input=BEST + "\n\n" + str(S.from_index(0)) + "\n")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [row["arch"] for row in rows] == [BEST, str(S.from_index(0))]
    assert int(rows[0]["params"]) == S.params(S.parse(BEST)) == 1288506
    assert int(rows[0]["macs"]) == S.macs(S.parse(BEST))


def test_predict_json(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(BEST + "\n")
    r = run("predict", "--archs", str(f), "--format", "json")
    assert r.exit_code == 0 and '"params": 1288506' in r.output


def test_bad_line_is_one_line_and_exit_2():
    r = run("predict", "--space", "nb201", "--archs", "-", input=BEST + "\n|conv~0|\n")
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0
    assert "line 2" in r.output and "Traceback" not in r.output


def test_console_script_exit_status():
    p = subprocess.run([sys.executable, "-m", "pomonag_edge", "predict", "--archs", "-"], input="|conv~0|\n",
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("Error:") and len(p.stderr.strip().splitlines()) == 1
    assert p.stdout == ""
