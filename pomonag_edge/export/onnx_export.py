"""PyTorch module -> checked ONNX file.

The TorchScript exporter (``dynamo=False``) is used on purpose: it is several times faster than the dynamo
exporter and needs no extra dependency (DESIGN.md).

No graph simplifier is run: it would not earn its place. With constant folding in eval mode the
exporter already folds every BatchNorm that follows a conv; an exported NB201 net holds only Conv,
Relu, Add, pooling, one BatchNorm (after a sum, not foldable), Flatten and Gemm nodes (e.g. 110
nodes: 52 Conv, 35 Relu, 17 Add, ...), with no Identity, Shape or Constant node for onnx-simplifier
to remove, and ONNX Runtime and TensorRT fuse Conv+Relu themselves at load time.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write_bytes

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits",)
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 11, 20  # 20: the newest the TorchScript exporter (torch 2.x) writes
_BATCH_AXIS = "batch"
METADATA_PREFIX = "pomonag_edge."  # keys of the metadata_props an exported file carries
ARCH_KEY_PREFIXES = ("|", "ks=")  # how canonical arch strings start (nb201, mbv3): {arch: state_dict} files


def build_model(space, arch, dataset: str | None, weights: dict | None = None, seed: int = 0):
    """The net in eval mode: ``weights`` (a state_dict) loaded, else a seeded random init.

    Random init also randomises BatchNorm running statistics and affine terms, seeded, so the numeric
    check exercises BN folding the way a trained net would (fresh BN is an identity and hides bugs).
    The same (arch, seed) always gives the same weights, so an existing export can be re-checked.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_arch_seed(arch, seed))
        model = space.build(arch, dataset)
        if weights is None:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    n = m.num_features
                    m.running_mean.copy_(torch.randn(n) * 0.1)
                    m.running_var.copy_(torch.rand(n) * 0.5 + 0.75)
                    m.weight.data.copy_(torch.rand(n) * 0.5 + 0.75)
                    m.bias.data.copy_(torch.randn(n) * 0.1)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise UserError(f"--weights do not fit {arch}: {len(missing)} missing key(s) "
                            f"(e.g. {_first(missing)}), {len(unexpected)} unexpected (e.g. {_first(unexpected)})")
    return model.eval()


def load_weights(path: str | Path, arch) -> dict:
    """A checkpoint is a state_dict for every net, or ``{arch string: state_dict}`` for several."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--weights {path} does not exist") from None
    except Exception as e:  # pickle errors, non-tensor content: the user's file, not our bug
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"cannot read --weights {path} as a PyTorch state_dict file: {why}") from None
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and k.startswith(ARCH_KEY_PREFIXES) for k in obj):
        if str(arch) not in obj:
            raise UserError(f"--weights {path} holds no state_dict for {arch}")
        obj = obj[str(arch)]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"--weights {path} is not a state_dict (a dict of tensors) nor {{arch: state_dict}}")
    return obj


def preprocessing(input_shape: tuple[int, ...], trained: dict | None) -> dict:
    """What a deployment engineer must do to an image before the net sees it: input shape and layout, pixel
    scale, per-channel mean and std, and the class of each output. ``trained``: ``train``'s results (the data's
    normalisation from its training split, its class names); without it the weights are untrained and there is
    no normalisation to state (``mean``, ``std`` and ``classes`` are null)."""
    data = (trained or {}).get("data") or {}
    norm = data.get("normalisation") or {}
    classes = (trained or {}).get("task", {}).get("classes") or data.get("classes")
    return {"input_name": INPUT_NAME, "input_shape": list(input_shape), "layout": "NCHW", "channels": "RGB",
            "pixel_scale": norm.get("pixel_scale", "0..1"), "mean": norm.get("mean"), "std": norm.get("std"),
            "normalise": "(pixel - mean) / std per channel" if norm else None,
            "classes": list(classes) if classes else None, "output_name": OUTPUT_NAMES[0]}


def export_onnx(model, input_shape: tuple[int, ...], path: str | Path, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, metadata: dict | None = None) -> Path:
    """Export, write atomically, then ``onnx.checker`` with full shape inference. Returns the path.
    ``metadata``: stored in the model's ``metadata_props`` as ``pomonag_edge.KEY`` -> JSON text, so the file
    itself says how to feed it (``preprocessing``)."""
    import onnx
    import torch

    check_opset(opset)
    dummy = torch.zeros(input_shape)
    buf = io.BytesIO()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: _BATCH_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation on every call; we chose it knowingly
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"{METADATA_PREFIX}{key}", json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write_bytes(path, proto.SerializeToString())


def read_metadata(path: str | Path) -> dict:
    """The ``pomonag_edge.*`` metadata of an exported file (``export_onnx``), keys without the prefix."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset} is not supported; use {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")


def onnx_summary(path: str | Path) -> dict:
    """What the report records about a file: size, node count, opset, input shape, content hash."""
    import onnx

    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = Path(path).read_bytes()
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16],
            "nodes": len(model.graph.node), "opset": opset, "input_shape": dims}


def file_stem(rank: int, arch, space) -> str:
    """``01_nb201_3942``: rank first so files sort like the table, table index or hash so names stay short."""
    index = space.table_index(arch)
    key = str(index) if index is not None else hashlib.sha1(str(arch).encode()).hexdigest()[:10]
    return f"{rank:02d}_{space.name}_{key}"


def _arch_seed(arch, seed: int) -> int:
    return (int(hashlib.sha256(str(arch).encode()).hexdigest()[:8], 16) + seed) % (2**31)


def _first(keys) -> str:
    return keys[0] if keys else "-"


def random_inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded standard-normal input, float32, the same for every runtime compared."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
