"""What every expert method provides: a validated config dataclass and a module.

A method attaches to a frozen backbone in one of two ways, or both:
- `prepare_inputs` rewrites the input embeddings (soft prompts prepend tokens);
- `attach` installs forward hooks on backbone submodules (LoRA, adapters), so
  the backbone itself is never edited and several experts can share it.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.peft import PeftMapping


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with help text (shown by `transferkit methods`)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _coerce(text: str, annotation: Any, key: str) -> Any:
    """Parse a `KEY=VALUE` command-line option into the field's declared type."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own dataclass annotations only
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            return None
        return _coerce(text, args[0], key)
    if origin is typing.Literal:
        if text not in typing.get_args(annotation):
            raise InvalidInputError(f"option {key}={text!r} must be one of {', '.join(map(str, typing.get_args(annotation)))}")
        return text
    if origin in (list, tuple):
        return [_coerce(part.strip(), args[0], key) for part in text.split(",") if part.strip()]
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return annotation(text)
    except ValueError:
        raise InvalidInputError(f"option {key}={text!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None


def json_value_matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a config field's declared type (a stored or imported config is not trusted)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(json_value_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, list) and all(json_value_matches(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return isinstance(value, (int, float) if annotation is float else int) and not isinstance(value, bool)
    return isinstance(annotation, type) and isinstance(value, annotation)


@dataclass
class MethodConfig:
    """Base class of method configs. Subclasses declare fields with `option(...)`."""

    recommended_lr: ClassVar[float] = 1e-3

    def validate(self) -> None:
        """Raise InvalidInputError for out-of-range values; subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise InvalidInputError(
                f"unknown option(s) {', '.join(unknown)} for this method; valid: {', '.join(cls.field_names())}"
            )
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not json_value_matches(value, hints[key]):
                raise InvalidInputError(f"option {key}={value!r} is not a valid {_type_name(hints[key])}")
        config = cls(**data)
        config.validate()
        return config

    @classmethod
    def from_options(cls, options: list[str]) -> MethodConfig:
        """Build from `KEY=VALUE` strings as given on the command line."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in options:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise InvalidInputError(f"method option {item!r} must look like KEY=VALUE")
            if key not in hints or key not in cls.field_names():
                raise InvalidInputError(f"unknown method option {key!r}; valid: {', '.join(cls.field_names())}")
            values[key] = _coerce(text.strip(), hints[key], key)
        return cls.from_dict(values)

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, str]]:
        """(name, default, help) for each field."""
        return [
            (f.name, repr(f.default if f.default is not dataclasses.MISSING else f.default_factory()), f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "choice of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class ExpertModule(nn.Module, abc.ABC):
    """Trainable parameters of one expert, attached to a frozen backbone."""

    def __init__(self, config: MethodConfig, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.backbone_hidden_size = backbone.hidden_size

    def prepare_inputs(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return (embeddings, attention mask, number of virtual tokens prepended)."""
        return embeddings, attention_mask, 0

    def attach(self, backbone: Backbone) -> None:
        """Install hooks on the backbone (none by default)."""

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def training_statistics(self) -> dict[str, Any]:
        """What the method recorded while training (e.g. MEPT's per-expert load), stored on the expert; none by default.

        Called on every process of a multi-process run (it may sum counts across them), before the main one stores it.
        """
        return {}

    def lent_prompt(self) -> torch.Tensor | None:
        """The soft prompt this expert lends to prompt-attention transfer (ATTEMPT); None: it has none to lend."""
        return None

    def silence(self) -> None:
        """Zero the parameters that produce the expert's change, so it changes nothing (a merge that uses no source)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be silenced")

    @abc.abstractmethod
    def export_tensors(self) -> dict[str, torch.Tensor]:
        """The final tensors to store: training-only structure (e.g. reparameterisation) collapsed away."""

    @abc.abstractmethod
    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors written by `export_tensors` (names and shapes must match exactly)."""

    def _check_tensor_names(self, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise InvalidInputError(f"stored expert tensors do not match the method: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise InvalidInputError(
                    f"stored tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)} for this backbone"
                )


def find_modules(model: nn.Module, suffixes: list[str], exclude: str | None = None) -> dict[str, nn.Module]:
    """Submodules whose dotted name ends with one of `suffixes` (PEFT's matching rule), optionally excluding a regex."""
    found = {}
    for name, module in model.named_modules():
        if any(name == s or name.endswith("." + s) for s in suffixes) and not (exclude and re.search(exclude, name)):
            found[name] = module
    return found


@dataclass(frozen=True)
class StackedDeltas:
    """The chosen experts' additive changes to one module's output, kept factored:

        delta_k = up_k @ code_k + bias_k      code (B, T, k, r), up (B, k, out, r), bias (B, k, out) or None

    (with `up`/`bias` lacking the batch dimension when every example uses every expert). Nothing
    of size B x k x T x out is ever built, so a dense mixture of many experts costs memory
    proportional to k x r, not k x out, per token.
    """

    code: torch.Tensor
    up: torch.Tensor
    bias: torch.Tensor | None

    def _up(self, code: torch.Tensor) -> torch.Tensor:
        """sum_k up_k @ code_k: (B, T, out)."""
        return torch.einsum("btkr,kor->bto" if self.up.dim() == 3 else "btkr,bkor->bto", code, self.up.to(code.dtype))

    def _transpose_up(self, vector: torch.Tensor) -> torch.Tensor:
        """up_k^T @ vector per token: (B, T, k, r)."""
        return torch.einsum("bto,kor->btkr" if self.up.dim() == 3 else "bto,bkor->btkr", vector, self.up.to(vector.dtype))

    def _bias(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_k w_k bias_k: (B, 1, out)."""
        equation = "bk,ko->bo" if self.bias.dim() == 2 else "bk,bko->bo"
        return torch.einsum(equation, weights, self.bias.to(weights.dtype)).unsqueeze(1)

    def mix(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[b, k] delta_k: (B, T, out)."""
        weights = weights.to(self.code.dtype)
        mixed = self._up(self.code * weights[:, None, :, None])
        return mixed if self.bias is None else mixed + self._bias(weights)

    def disagreement(self, mixed: torch.Tensor) -> torch.Tensor:
        """1 - cos(mixed, delta_k) per example and expert, averaged over tokens: (B, k), in float32.

        `mixed` is the mixture's change sum_k g_k delta_k (B, T, out). Expanded through the factors:
        mixed.delta_k = (up_k^T mixed).code_k + mixed.bias_k and
        |delta_k|^2 = code_k^T (up_k^T up_k) code_k + 2 code_k.(up_k^T bias_k) + |bias_k|^2,
        so no per-expert output is built.
        """
        code, up, mixed = self.code.float(), self.up.float(), mixed.float()
        dot = (self._transpose_up(mixed) * code).sum(-1)  # (B, T, k)
        gram = torch.einsum("kor,kos->krs" if up.dim() == 3 else "bkor,bkos->bkrs", up, up)
        own_norm = torch.einsum("btkr,krs,btks->btk" if up.dim() == 3 else "btkr,bkrs,btks->btk", code, gram, code)
        if self.bias is not None:
            bias = self.bias.float() if self.bias.dim() == 3 else self.bias.float().unsqueeze(0)  # (B|1, k, out)
            dot = dot + torch.einsum("bto,bko->btk", mixed, bias.expand(mixed.shape[0], -1, -1))
            up_bias = torch.einsum("bkor,bko->bkr", up if up.dim() == 4 else up.unsqueeze(0), bias)  # (B|1, k, r)
            own_norm = own_norm + 2 * (code * up_bias[:, None]).sum(-1) + (bias**2).sum(-1)[:, None]
        own = own_norm.clamp_min(0).sqrt().clamp_min(1e-8)
        cosine = dot / (mixed.norm(dim=-1, keepdim=True).clamp_min(1e-8) * own)
        return (1.0 - cosine).mean(dim=1)


class ExpertStack(nn.Module, abc.ABC):
    """Several frozen experts of one method stacked into tensors, so a mixture evaluates the
    experts chosen for each example in one batched operation instead of a Python loop."""

    module_names: list[str]

    @abc.abstractmethod
    def deltas(self, module_name: str, inputs: torch.Tensor, output: torch.Tensor, index: torch.Tensor | None) -> StackedDeltas:
        """The chosen experts' changes to `module_name`'s output, factored.

        inputs: (B, T, in) module input; output: (B, T, out) frozen module output;
        index: (B, k) expert indices per example, or None for every expert (dense routing).
        """

    @abc.abstractmethod
    def merge(self, weights: dict[str, torch.Tensor], backbone: Backbone) -> ExpertModule:
        """One expert of the stacked method whose change to each module equals `sum_j weights[module][j] * delta_j`.

        `weights` maps every module name to (J,) fixed weights (zero = source unused); exact up to float rounding.
        """


@dataclass(frozen=True)
class MethodType:
    """One registered method: its name, config and module classes, and what it can do."""

    name: str
    config_class: type[MethodConfig]
    module_class: type[ExpertModule]
    description: str
    stack: Callable[[list[ExpertModule]], ExpertStack] | None = None  # None: cannot be mixed as a transfer source
    peft: PeftMapping | None = None  # its PEFT counterpart (export/import), None: PEFT has none
    not_in_peft: str | None = None  # why PEFT cannot hold it, for the refusal ("a bottleneck adapter after ...")

    @property
    def composable(self) -> bool:
        return self.stack is not None

    def build(self, config: MethodConfig, backbone: Backbone) -> ExpertModule:
        config.validate()
        return self.module_class(config, backbone)
