"""``DeepHasher``: the scikit-learn-style face of DAHP — ``fit``, ``encode``, ``save``, ``load``.

It owns what a trained model is: the network, its configuration, the preprocessing,
the anchors and the class names, all saved together in one model file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, distributed
from .anchors import AnchorSet, generate_anchors
from .codes import demoted_codes, pack_codes
from .data import ImageCollection, Preprocess, decode_image, load_batches, split_batches
from .errors import DahpError
from .methods import get_method
from .models import HashingNetwork, ModelConfig, init_backbone
from .models.inference import OnnxRuntimeNetwork, inference_copy, running_model
from .serialization import load_file, reading, save_file
from .training import TrainConfig, Trainer, resolve_device

MODEL_FILE = "model.dahp"
CHECKPOINT_FILE = "checkpoint.dahp"
RUNTIMES = ("pytorch", "onnxruntime")
"""What runs a fitted network's forward pass when it encodes (training is always PyTorch)."""
ROLES = ("query", "database")
"""What a code is for: a database's codes follow the model's ``demote_uncertain`` rule."""


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto``: ONNX Runtime on the CPU when it is installed, else PyTorch; other names are checked."""
    on_cpu = resolve_device(device).type == "cpu"
    installed = all(importlib.util.find_spec(package) is not None for package in ("onnx", "onnxruntime"))
    if runtime == "auto":
        return "onnxruntime" if on_cpu and installed else "pytorch"
    if runtime not in RUNTIMES:
        raise DahpError(f"runtime must be auto or one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime" and not on_cpu:
        raise DahpError(f"the onnxruntime runtime encodes on the CPU; device {device!r} needs runtime pytorch")
    if runtime == "onnxruntime" and not installed:
        raise DahpError("the onnxruntime runtime needs the onnx and onnxruntime packages: pip install 'dahp[onnx]'")
    return runtime


class DeepHasher:
    """Learns ``bits``-bit codes for images; ``encode`` returns packed ``uint8`` codes."""

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        train_config: TrainConfig | None = None,
        preprocess: Preprocess | None = None,
        weights: str | None = None,
        device: str = "auto",
        progress: bool = True,
        runtime: str = "pytorch",
    ) -> None:
        self.model_config = model_config or ModelConfig()
        self.train_config = train_config or TrainConfig()
        self.preprocess = preprocess or Preprocess()
        self.weights = weights
        self.device = resolve_device(device)
        self.progress = progress
        self.runtime = resolve_runtime(runtime, device)
        self.model_: HashingNetwork | None = None
        self.anchors_: AnchorSet | None = None
        self.class_names_: list[str] = []
        self.history_: list[dict[str, float]] = []
        self.weights_note_ = ""
        self.data_spec_: dict[str, Any] = {}
        self.fingerprint_ = ""  # SHA-256 of the saved weights: indexes check they were built by this model
        self._encoder: torch.nn.Module | None = None  # the fitted network's inference copy, made on first use

    @property
    def bits(self) -> int:
        return self.model_config.bits

    def method_name(self) -> str:
        """The method's name in the paper's tables, noting a network variant that differs from it."""
        method = get_method(self.train_config.method)
        if self.model_config.attention == method.attention:
            return method.title
        return f"{method.title}, {'with' if self.model_config.attention else 'without'} dual attention"

    def _header(self) -> dict[str, Any]:
        assert self.anchors_ is not None
        return {
            "dahp_version": __version__,
            "bits": self.bits,
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "anchors": self.anchors_.to_dict(),
            "class_names": self.class_names_,
            "data": self.data_spec_,
            "weights": self.weights_note_,
        }

    def fit(
        self,
        data: ImageCollection,
        out_dir: str | Path | None = None,
        resume: bool = False,
        data_spec: dict[str, Any] | None = None,
    ) -> DeepHasher:
        """Train on ``data``; with ``out_dir``, checkpoint there each epoch and save the model file.

        Under ``torchrun`` every process trains its shard of each batch (``dahp.training``)
        and ends with the same model; rank 0 alone writes the checkpoints and the model file.
        """
        out = Path(out_dir) if out_dir is not None else None
        checkpoint = out / CHECKPOINT_FILE if out is not None else None
        if resume and (checkpoint is None or not checkpoint.is_file()):
            raise DahpError(f"--resume: there is no checkpoint to resume from in {out}")
        self.class_names_ = list(data.class_names)
        self.data_spec_ = data_spec or {"source": data.source}
        self.train_config = self.train_config.sized_for(len(data))  # --min-steps on a small training set
        self.anchors_ = generate_anchors(self.bits, data.num_classes, seed=self.train_config.seed)
        torch.manual_seed(self.train_config.seed)
        model = HashingNetwork(self.model_config)
        smallest = getattr(model.backbone, "min_image_size", 1)
        if self.preprocess.image_size < smallest:
            raise DahpError(f"backbone {self.model_config.backbone} needs inputs of at least {smallest} px; "
                            f"the image size is {self.preprocess.image_size} (set --image-size)")
        self.weights_note_ = "restored from checkpoint" if resume else init_backbone(model.backbone, self.weights)
        trainer = Trainer(
            model,
            torch.from_numpy(self.anchors_.signed()),
            self.preprocess,
            self.train_config,
            self.device,
            checkpoint_path=checkpoint,
            progress=self.progress,
        )
        if resume:
            assert checkpoint is not None
            header = trainer.restore(checkpoint)
            with reading(checkpoint, "checkpoint"):
                self._check_same_run(header, checkpoint)
                self.weights_note_ = header["weights"]
        trainer.checkpoint_header = self._header()
        self.history_ = trainer.fit(data)
        self.model_, self._encoder = model, None
        if out is not None and distributed.is_main_process():
            self.save(out / MODEL_FILE)
        distributed.barrier()  # under torchrun, the others wait for rank 0's files
        return self

    def _check_same_run(self, header: dict[str, Any], path: Path) -> None:
        saved = {
            "model configuration": (ModelConfig.from_dict(header["model_config"]), self.model_config),
            "preprocessing": (Preprocess.from_dict(header["preprocess"]), self.preprocess),
            "class list": (header["class_names"], self.class_names_),
        }
        for what, (then, now) in saved.items():
            if then != now:
                raise DahpError(f"--resume: {path} was made with a different {what}: {then} (now {now})")
        self.anchors_ = AnchorSet.from_dict(header["anchors"])

    def _require_fitted(self) -> HashingNetwork:
        if self.model_ is None:
            raise DahpError("this DeepHasher is not trained yet: call fit() or DeepHasher.load()")
        return self.model_

    def _encoding_network(self) -> torch.nn.Module:
        """What encodes, made once per fitted model: the network with BatchNorm folded, channels-last, on
        the device (the same codes, about 2x faster on CPUs), or its ONNX Runtime graph (``runtime``)."""
        if self._encoder is None:
            model = self._require_fitted()
            if self.runtime == "onnxruntime":
                self._encoder = OnnxRuntimeNetwork(model, self.bits, self.preprocess.image_size)
            else:
                self._encoder = inference_copy(model).to(self.device)
        return self._encoder

    def encode_real(
        self, data: ImageCollection, batch_size: int = 256, workers: int = 0, progress: bool = False
    ) -> np.ndarray:
        """Real-valued network outputs ``b`` (n, bits); their signs are the codes."""
        outputs = []
        with tqdm(total=len(data), desc="encoding", unit="img", disable=not progress) as bar:
            for output, indices in self.encode_batches(data, split_batches(np.arange(len(data)), batch_size), workers):
                outputs.append(output)
                bar.update(len(indices))
        return np.concatenate(outputs)

    @torch.inference_mode()
    def encode_batches(
        self, data: ImageCollection, batches: Sequence[np.ndarray], workers: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(real outputs, indices)`` per batch of indices into ``data``, as each forward pass finishes.

        Lets a long encoding commit its results as they come (``dahp.index.ingest``); the
        batches are the caller's, so an image's code never depends on who encodes it.
        """
        model = self._encoding_network()
        for images, indices in load_batches(data, batches, self.preprocess, workers):
            with running_model(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                 enabled=self.device.type == "cuda"):
                output = model(images.to(self.device)).float().cpu().numpy()
            yield output, indices

    def encode(
        self, data: ImageCollection, batch_size: int = 256, workers: int = 0, progress: bool = False,
        role: str = "query",
    ) -> np.ndarray:
        """Packed codes: (n, ceil(bits/8)) ``uint8``, bit = 1 where b > 0 (see :meth:`codes`)."""
        return self.codes(self.encode_real(data, batch_size, workers, progress), role)

    def codes(self, outputs: np.ndarray, role: str = "query") -> np.ndarray:
        """Packed codes of real outputs: their signs for queries; for a database, with the uncertain
        images demoted by one bit when the model says so (``ModelConfig.demote_uncertain``)."""
        if role not in ROLES:
            raise DahpError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        ratio = self.model_config.demote_uncertain if role == "database" else 0.0
        return demoted_codes(outputs, ratio) if ratio else pack_codes(outputs)

    def encode_images(self, images: Sequence[str | Path | IO[bytes]]) -> np.ndarray:
        """Packed codes for a few images given as files or byte streams (a query, an upload)."""
        size = self.preprocess.image_size
        return self.encode_pixels(np.stack([decode_image(image, size) for image in images]))

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Packed codes for decoded ``(n, h, w, 3)`` uint8 images in one forward pass: a server decodes
        each query on its own thread, then encodes many together."""
        model = self._encoding_network()
        batch = self.preprocess.batch(pixels).to(self.device)
        with running_model():
            return pack_codes(model(batch).float().cpu().numpy())

    def save(self, path: str | Path) -> None:
        model = self._require_fitted()
        save_file(path, "model", self._header() | {"history": self.history_},
                  {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}})

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", runtime: str = "pytorch") -> DeepHasher:
        header, payload = load_file(path, "model")
        with reading(path, "model"):
            hasher = cls(
                ModelConfig.from_dict(header["model_config"]),
                TrainConfig.from_dict(header["train_config"]),
                Preprocess.from_dict(header["preprocess"]),
                device=device,
                runtime=runtime,
            )
            anchors = AnchorSet.from_dict(header["anchors"])
            if anchors.bits != hasher.bits or header["bits"] != hasher.bits:
                raise DahpError(f"{path}: anchors have {anchors.bits} bits but the model has {hasher.bits}")
            model = HashingNetwork(hasher.model_config)
            model.load_state_dict(payload["state_dict"])
            hasher.class_names_ = list(header["class_names"])
            hasher.history_ = list(header.get("history", []))
            hasher.weights_note_ = header["weights"]
            hasher.data_spec_ = header["data"]
        hasher.model_, hasher.anchors_ = model, anchors
        hasher.fingerprint_ = header["payload_sha256"]
        return hasher
