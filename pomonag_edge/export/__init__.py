"""Export: a run's best nets -> ONNX (and TensorRT engines), numerically checked, latency re-measured.

``export_run(run_dir, ExportOptions(...))`` does it all and writes ``RUN_DIR/export/report.json``;
``plan_export`` is what it decides before building anything (the files, the precision, what is timed where);
``render(report, console)`` prints it. torch, onnx and the runtimes are imported only when used.
"""

from .pipeline import ExportOptions, ExportPlan, export_run, machine_mismatch, parse_formats, plan_export, summarize
from .report import SCHEMA, SCHEMA_VERSION, render

__all__ = ["ExportOptions", "ExportPlan", "export_run", "machine_mismatch", "parse_formats", "plan_export", "summarize",
           "render", "SCHEMA", "SCHEMA_VERSION"]
