"""A copy of a network for inference only: BatchNorm folded into its convolution, channels-last.

Why: in eval mode a ``BatchNorm2d`` is a fixed per-channel affine map, yet on CPUs it runs
as a separate pass over every feature map. Folded into the convolution before it
(``W' = W * gamma / sigma``, ``b' = beta + (b - mu) * gamma / sigma``) it costs nothing;
channels-last (NHWC) weights then let oneDNN pick its faster kernels, above all for
EfficientNet's depthwise convolutions. The copy computes the same function as the original
in eval mode, to float rounding (~1e-6 relative).

Measured with ``benchmarks/inference_speed.py`` (1 thread, batch 64, CPU time): folding alone
gives EfficientNet-Lite0 1.1-1.3x, folding and channels-last 2.0x at 96 px and 2.3x at 224 px
(backbone; 1.6-2.1x for the whole network with attention); ResNet-18 1.4x at 224 px. The one
case where channels-last lost was ResNet-18 on 32-px inputs (4x4 maps at its end): 3% slower
than folding alone, within noise with two threads -- pass ``channels_last=False`` there.

Finding the pairs, by tracing rather than by a naming convention: ``torch.fx`` symbolically
traces the module and a BatchNorm2d is folded exactly where the graph shows its only input is
a Conv2d's output and that output feeds nothing else (a residual branch reading the raw
convolution would otherwise see the folded one). This needs no cooperation from the modules
(ResNet's ``conv1``/``bn1``, EfficientNet's ``_project_conv``/``_bn2``, attention's
``Sequential(conv, bn, relu)`` all fold alike) and cannot pair a conv with a BatchNorm that
merely sits next to it in ``__init__``. Conv2d and BatchNorm2d subclasses are traced as
single nodes, so EfficientNet's TensorFlow-SAME ``StridedSameConv2d`` (which pads, then runs
``Conv2d.forward`` with its own weight and bias) folds too.

Tracing fails on modules whose Python reads tensor shapes (``n, c, h, w = x.shape`` in the
attention modules); such a module is skipped and each of its children traced on its own, so
everything below it that can fold still does, and a module that cannot be traced at any level
is left as it is. Pairs are also left alone when the conv or BatchNorm is registered under two
names, called twice, or has its parameters read directly in the traced code. The one thing
tracing cannot see is an untraceable ancestor reaching into a traced child's conv or BatchNorm
(reading its weight, calling it on another input); in this package only PositionAttention reads
its convs' weights, and no BatchNorm follows those.

Only the modules change: each folded conv becomes a copy with a bias, each folded BatchNorm an
``nn.Identity``, and the model keeps its class and its own ``forward``. So the copy's state
dict no longer loads into the original architecture -- save the original, never the copy.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import DahpError


class _ConvBatchNormTracer(fx.Tracer):
    """torch.fx's tracer with every Conv2d and BatchNorm2d, subclasses included, as one call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(module, qualified_name)


class _TraceGuard:
    """Keeps torch.fx tracing and forward passes on other threads apart.

    Why: while it traces, torch.fx patches ``torch.nn.Module.__call__`` for the whole process,
    so a model running on another thread at that moment is routed into the tracer and fails
    (``NameError: module is not installed as a submodule``). A server that loads a new model
    while it answers queries with the old one does exactly that. A trace takes the guard alone
    and waits for running passes to end; passes share it and wait while a trace runs or waits.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._tracing = False
        self._waiting_traces = 0

    @contextmanager
    def tracing(self) -> Iterator[None]:
        with self._changed:
            self._waiting_traces += 1
            self._changed.wait_for(lambda: not self._tracing and not self._running)
            self._waiting_traces -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._changed:
                self._tracing = False
                self._changed.notify_all()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._tracing and not self._waiting_traces)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


_GUARD = _TraceGuard()


def running_model() -> AbstractContextManager[None]:
    """Hold around a forward pass that may run while another thread makes an :func:`inference_copy`."""
    return _GUARD.running()


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every Conv2d -> BatchNorm2d pair folded, for inference only.

    ``model`` itself is not modified. The copy's parameters are frozen (it has no BatchNorm to
    train any more), and with ``channels_last`` its 4-D weights are stored NHWC, so its
    convolutions run in, and its 4-D outputs come back in, channels-last memory format (same
    values, different strides; ``.contiguous()`` where a caller needs NCHW).
    """
    if not isinstance(model, nn.Module):
        raise DahpError(f"inference_copy needs a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    with _GUARD.tracing():
        _fold_batch_norms(folded, _shared_modules(folded))
    folded.requires_grad_(False)
    if channels_last:
        folded.to(memory_format=torch.channels_last)
    return folded


def _fold_batch_norms(module: nn.Module, shared: frozenset[int]) -> int:
    """Fold, in place, every eval-mode BatchNorm2d that tracing shows reads only a Conv2d's output;
    return how many. Modules whose ids are in ``shared`` are left alone."""
    try:
        graph = _ConvBatchNormTracer().trace(module)
    except Exception:  # any Python fx cannot follow (shape unpacking, data-dependent control flow)
        return sum(_fold_batch_norms(child, shared) for child in module.children())
    modules = dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    read = [node.target for node in graph.nodes if node.op == "get_attr"]
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        if not isinstance(modules[target], nn.BatchNorm2d):
            if next(modules[target].children(), None) is not None and not isinstance(modules[target], nn.Conv2d):
                folded += _fold_batch_norms(modules[target], shared)  # a composite torch.nn leaf: look inside
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and list(source.users) == [node]):
            continue
        conv_name = str(source.target)
        conv, batch_norm = modules[conv_name], modules[target]
        if not (isinstance(conv, nn.Conv2d) and _foldable(batch_norm)):
            continue
        if calls[conv_name] != 1 or calls[target] != 1 or {id(conv), id(batch_norm)} & shared:
            continue
        if any(str(name).startswith((f"{conv_name}.", f"{target}.")) for name in read):
            continue
        _replace(module, conv_name, fuse_conv_bn_eval(conv, batch_norm))
        _replace(module, target, nn.Identity().eval())
        folded += 1
    return folded


def _foldable(batch_norm: nn.Module) -> bool:
    """Eval-mode BatchNorm with running statistics (without them it normalises by the batch's)."""
    return (
        isinstance(batch_norm, nn.BatchNorm2d)
        and not batch_norm.training
        and batch_norm.running_mean is not None
        and batch_norm.running_var is not None
    )


def _shared_modules(root: nn.Module) -> frozenset[int]:
    """Ids of the modules registered under more than one name: replacing one name would leave the other."""
    counts = Counter(id(module) for _, module in root.named_modules(remove_duplicate=False))
    return frozenset(key for key, count in counts.items() if count > 1)


def _replace(root: nn.Module, qualified_name: str, replacement: nn.Module) -> None:
    parent_name, _, name = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, replacement)


class OnnxRuntimeNetwork(nn.Module):
    """A network's forward pass run by ONNX Runtime on the CPU: the same outputs, to float rounding.

    Why: PyTorch's eager forward takes Python's GIL between its operators, so beside a thread
    that runs Python (a web server's event loop, parsing requests) each operator waits for the
    GIL. ``benchmarks/encoding_backends.py`` measured the ``cpu-transfer`` network at batch 8
    on 2 cores: PyTorch 179 img/s alone and 13 beside a busy Python thread, ONNX Runtime 179
    and 125 (the busy thread takes one of the cores); it runs the whole graph without the GIL.
    The graph is traced from an eval-mode copy of ``model`` and checked against PyTorch on a
    probe batch before it is used (:func:`dahp.export.onnx_session`); needs ``dahp[onnx]``.
    Its worker threads sleep between runs instead of spinning (ONNX Runtime's default), since
    what runs beside it (decoding, HTTP) needs those cores: spinning, the same measurement
    beside Python gave 69 img/s.
    """

    def __init__(self, model: nn.Module, bits: int, image_size: int) -> None:
        from ..export import INPUT_NAME, OUTPUT_NAMES, onnx_session

        super().__init__()
        self._session = onnx_session(copy.deepcopy(model).eval(), bits, image_size)
        self._input, self._output = INPUT_NAME, OUTPUT_NAMES[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Real-valued outputs for normalised NCHW images (any memory format)."""
        (values,) = self._session.run([self._output], {self._input: images.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(values)
