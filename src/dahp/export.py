"""Export a trained model's encoder to ONNX, so it can be deployed without dahp or PyTorch.

The graph takes images already normalised by the model's preprocessing (recorded in the
file's ``metadata_props``) and returns the codes exactly as :func:`dahp.codes.pack_codes`
packs them, so an index built by dahp can be queried from ONNX Runtime and vice versa. They
are query codes: a model trained with ``--demote-uncertain`` stores a database's codes with
its unsure images demoted (:func:`dahp.codes.demoted_codes`), which ``database_codes`` in
the metadata spells out for a deployer who builds a database from the graph's outputs.

It uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only the
``onnx`` package, no ``onnxscript``, and traces the attention's ``bmm``/``softmax``
with a dynamic batch axis. Before anything is written, ONNX Runtime runs the exported
graph on a probe batch and must agree with PyTorch.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .codes import pack_codes
from .errors import DahpError

if TYPE_CHECKING:  # torch loads only when a model is exported, so `dahp --help` stays fast
    from torch import nn

    from .hasher import DeepHasher

MIN_OPSET, MAX_OPSET = 13, 20  # 13: softmax over one axis; 20: the TorchScript exporter's newest
INPUT_NAME = "images"
OUTPUT_NAMES = ("codes", "hash_values")
PROBE_BATCH = 3  # export and check with a batch size that is neither 1 nor a model dimension
PROBE_TOLERANCE = 1e-3  # largest |ONNX - PyTorch| accepted, relative to max(1, |hash values|)

Handler = Callable[[argparse.Namespace], None]


def _encoder(network: nn.Module, bits: int, pack: bool) -> nn.Module:
    """The network plus the code step, so deployers get dahp's codes, not just real values."""
    import torch

    # Bit i goes to byte i // 8 with weight 2**(7 - i % 8): np.packbits' big-endian order.
    # Padding bits have no row here, so they are zero. Sums of at most 255 are exact in float32.
    index = torch.arange(bits)
    bit_weights = torch.zeros(bits, (bits + 7) // 8)
    bit_weights[index, index // 8] = 2.0 ** (7 - index % 8).float()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("bit_weights", bit_weights, persistent=False)

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            values = self.network(images)
            code_bits = (values > 0).to(torch.float32)
            codes = code_bits @ self.bit_weights if pack else code_bits
            return codes.to(torch.uint8), values

    return Encoder().eval()


def _require_onnx() -> tuple[Any, Any]:
    """Import the optional dependencies, or say how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise DahpError(f"ONNX export needs the {exc.name} package: pip install 'dahp[onnx]'") from None
    return onnx, onnxruntime


def _check_output_path(path: Path) -> None:
    if path.is_dir():
        raise DahpError(f"--onnx {path} is a directory: give a file name such as {path / 'model.onnx'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DahpError(f"cannot write {path}: {parent} is not a directory")
            return


def _database_rule(ratio: float) -> str:
    if not ratio:
        return "the codes as they are"
    return (f"the codes, except that a row whose smallest |hash_values| is below {ratio} x its mean |hash_values| "
            "has that bit flipped (dahp.codes.demoted_codes); queries use the codes as they are")


def _metadata(hasher: DeepHasher, pack: bool) -> dict[str, str]:
    """What a deployer needs to feed the graph and read its outputs, as ONNX string properties."""
    preprocess = hasher.preprocess
    return {
        "image_size": str(preprocess.image_size),
        "mean": json.dumps(list(preprocess.mean)),
        "std": json.dumps(list(preprocess.std)),
        "input": "RGB, NCHW float32, x = (pixel / 255 - mean) / std, resized (bilinear) to image_size",
        "bits": str(hasher.bits),
        "codes": "packed: np.packbits(hash_values > 0, axis=1)" if pack else "bits: uint8 (hash_values > 0)",
        "database_codes": _database_rule(hasher.model_config.demote_uncertain),
        "fingerprint": hasher.fingerprint_,
        "dahp_version": __version__,
        "class_names": json.dumps(hasher.class_names_),
        "model_config": json.dumps(hasher.model_config.to_dict()),
    }


def _trace(encoder: nn.Module, image_size: int, opset: int) -> bytes:
    import torch

    probe = torch.zeros(PROBE_BATCH, 3, image_size, image_size)
    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript.
        for message in ("You are using the legacy TorchScript-based ONNX export", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(encoder, (probe,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True)
    return buffer.getvalue()


def _verify(serialised: bytes, encoder: nn.Module, pack: bool, image_size: int, onnxruntime: Any) -> float:
    """Run the graph in ONNX Runtime on random images; refuse it unless it matches PyTorch."""
    import torch

    images = torch.randn(PROBE_BATCH + 2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected_values = encoder(images)[1].numpy()
    session = onnxruntime.InferenceSession(serialised, providers=["CPUExecutionProvider"])
    codes, values = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    difference = float(np.abs(values - expected_values).max())
    if difference > PROBE_TOLERANCE * max(1.0, float(np.abs(expected_values).max())):
        raise DahpError(f"the exported graph disagrees with PyTorch by up to {difference:.3g}; nothing was written")
    packed_from_values = pack_codes(values) if pack else (values > 0).astype(np.uint8)
    if codes.dtype != np.uint8 or not np.array_equal(codes, packed_from_values):
        raise DahpError("the exported graph's codes do not match its hash values; nothing was written")
    return difference


def onnx_session(network: nn.Module, bits: int, image_size: int, spinning: bool = False, opset: int = 17) -> Any:
    """An ONNX Runtime session of ``network``'s encoder, checked against PyTorch as an export is.

    Inputs ``images`` (normalised NCHW float32), outputs ``codes`` (packed) and ``hash_values``.
    Used by :class:`dahp.models.inference.OnnxRuntimeNetwork` to encode without Python's GIL.
    ``spinning`` keeps ONNX Runtime's default of worker threads that spin for more work after
    each run; off, they sleep at once and leave the cores to the rest of the process.
    """
    _, onnxruntime = _require_onnx()
    encoder = _encoder(network, bits, pack=True)
    serialised = _trace(encoder, image_size, opset)
    _verify(serialised, encoder, True, image_size, onnxruntime)
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(serialised, options, providers=["CPUExecutionProvider"])


def export_onnx(model_path: str | Path, out_path: str | Path, opset: int = 17, pack: bool = True) -> dict[str, Any]:
    """Write the model's encoder (images -> codes, hash_values) as a checked ONNX file; returns a summary."""
    from .hasher import DeepHasher
    from .serialization import atomic_write_bytes

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DahpError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    onnx, onnxruntime = _require_onnx()
    out = Path(out_path)
    _check_output_path(out)
    hasher = DeepHasher.load(model_path, device="cpu")
    assert hasher.model_ is not None
    size = hasher.preprocess.image_size
    encoder = _encoder(hasher.model_, hasher.bits, pack)

    model = onnx.load_model_from_string(_trace(encoder, size, opset))
    model.doc_string = f"dahp {hasher.method_name()} encoder, {hasher.bits}-bit codes"
    onnx.helper.set_model_props(model, _metadata(hasher, pack))
    onnx.checker.check_model(model, full_check=True)
    serialised = model.SerializeToString()
    difference = _verify(serialised, encoder, pack, size, onnxruntime)
    try:
        atomic_write_bytes(out, serialised)
    except OSError as exc:
        raise DahpError(f"cannot write {out}: {exc.strerror or exc}") from None

    code_width = (hasher.bits + 7) // 8 if pack else hasher.bits
    return {
        "path": str(out),
        "bytes": len(serialised),
        "opset": opset,
        "bits": hasher.bits,
        "packed": pack,
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": ["batch", 3, size, size]}},
        "outputs": {
            "codes": {"dtype": "uint8", "shape": ["batch", code_width]},
            "hash_values": {"dtype": "float32", "shape": ["batch", hasher.bits]},
        },
        "max_abs_diff": difference,
    }


def cmd_export(args: argparse.Namespace) -> None:
    summary = export_onnx(args.model, args.onnx, opset=args.opset, pack=args.pack)
    codes = "packed uint8" if summary["packed"] else "one uint8 0/1 per bit"
    print(f"wrote {summary['path']} ({summary['bytes']:,} bytes, opset {summary['opset']}, {summary['bits']} bits)")
    for kind in ("inputs", "outputs"):
        for name, tensor in summary[kind].items():
            note = f"  ({codes})" if name == "codes" else ""
            print(f"  {kind[:-1]:<6} {name:<11} {tensor['dtype']:<7} {tensor['shape']}{note}")
    print(f"ONNX Runtime matches PyTorch within {summary['max_abs_diff']:.2g}")


def add_export_command(command: Callable[[str, Handler, str], argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``dahp export MODEL --onnx OUT`` through the CLI's subcommand factory."""
    parser = command("export", cmd_export, "export a model's encoder to ONNX, to compute codes without dahp")
    parser.add_argument("model", help="model file (model.dahp)")
    parser.add_argument("--onnx", required=True, type=Path, metavar="OUT", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default 17)")
    parser.add_argument("--no-pack", dest="pack", action="store_false",
                        help="output one uint8 0/1 per bit instead of packed bytes")
    return parser
