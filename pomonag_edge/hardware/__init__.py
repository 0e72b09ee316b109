"""Runtime backends, the timing protocol, device descriptors and detection, the per-op LUT, profiling.

    runnable = get_backend("onnxruntime", precision="fp32", threads=1).load("net.onnx")  # path, bytes, module
    outputs = runnable.run({"input": x})          # list of numpy arrays
    stats = runnable.measure(DEFAULT)             # Measurement: median_ms, p90_ms, p99_ms, mean_ms, cv, runs

Importing this package imports neither torch nor onnxruntime nor tensorrt; each backend does when made.
"""

from .backends import BACKENDS, PRECISIONS, get_backend
from .runnable import Runnable, onnx_bytes
from .devices import Descriptor, descriptor_names, detect_device, load_descriptor
from .lut import measure_job, select_calibration
from .timing import DEFAULT, PROTOCOLS, QUICK, Measurement, Protocol, measure, settle

__all__ = [
    "BACKENDS", "PRECISIONS", "Runnable", "get_backend", "onnx_bytes",
    "Descriptor", "descriptor_names", "detect_device", "load_descriptor",
    "measure_job", "select_calibration",
    "DEFAULT", "PROTOCOLS", "QUICK", "Measurement", "Protocol", "measure", "settle",
]
