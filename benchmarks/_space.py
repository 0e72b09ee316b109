"""``--space nb201|mbv3`` for the benchmarks that cover both spaces: mbv3 runs its own script beside the NB201 one."""

from __future__ import annotations

import argparse
import importlib
import sys


def split_space(argv):
    """The ``--space`` flag (default nb201) and the remaining flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--space", choices=("nb201", "mbv3"), default="nb201")
    ns, rest = pre.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return ns.space, rest


def run_mbv3(module: str, argv):
    return importlib.import_module(module).main(argv)
