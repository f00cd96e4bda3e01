"""PEFT's adapter format: `transferkit export --format peft` and `transferkit import` of adapters PEFT saved.

Export writes a folder that `peft.PeftModel.from_pretrained(base, DIR)` loads: `adapter_config.json`,
`adapter_model.safetensors` (PEFT's tensor names), `transferkit.json` (what PEFT's config cannot say) and a
model card `README.md` whose code returns transferkit's logits (the tests run that code).

Choices, each because it reproduces transferkit's logits exactly rather than approximately:
- Task type FEATURE_EXTRACTION on the base `AutoModel`, not SEQ_CLS: transferkit's head reads the mean of
  the real tokens' last hidden states, BERT's sequence-classification model reads its CLS pooler, so
  loading into `AutoModelForSequenceClassification` would silently give other logits. The head is saved
  as PEFT's `modules_to_save` module `transferkit_head`, under a name no transformers model has, so it
  only loads where the recipe put it.
- Prompt tuning carries [task-description prompt][method prompt] as its virtual tokens (the same order).
- LoRA carries the task-description prompt as PEFT trainable tokens: the embeddings of unused vocabulary
  entries (`[unused0]`, ...), which the recipe puts in front of the input.
- Prefix tuning: PEFT hands the prefix to BERT as a key/value cache, and BERT then numbers the real tokens
  from P on; transferkit's prefix numbers them from 0 (unless `position_offset`), so the recipe passes
  position ids shifted back by P (PEFT adds P to given ids). A prefix expert with a task prompt has no
  place for the prompt in a prefix adapter and is refused.
- PEFT's prompt-learning forward for FEATURE_EXTRACTION drops `token_type_ids`; the recipe adds the
  token-type embeddings to the input embeddings instead, so sentence pairs come out right.
Adapters, EPT, MEPT and mixtures have no PEFT counterpart and are refused with the reason.

Import accepts what PEFT saves for prompt tuning, prefix tuning and LoRA (safetensors only: a folder with
just a pickled `adapter_model.bin` is refused without being opened). The backbone is the adapter's base
model at its revision (or `--model`, which must be the same model); tensors are checked against it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from transferkit.backbone import (
    PACKAGED_MODEL_ID,
    Backbone,
    canonical_model_reference,
    load_backbone,
    public_model_name,
)
from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError
from transferkit.experts import artifact_metadata, expert_name, read_expert
from transferkit.interop.output import write_new_folder
from transferkit.interop.staging import TASK_PROMPT_TENSOR, StagedExperts, check_expert
from transferkit.interop.untrusted import DEFAULT_LIMITS, ImportLimits, load_safetensors, parse_json, read_folder_files
from transferkit.modeling import EXPERT_PREFIX, HEAD_PREFIX
from transferkit.provenance import code_version, package_versions
from transferkit.registry import ExpertRecord, RegistryStore, TaskRecord
from transferkit.task_registry import ensure_task_record
from transferkit.tasks import TaskSpec, resolve_task
from transferkit.version import __version__

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SIDE_FILE = "transferkit.json"
MODEL_CARD = "README.md"
SIDE_FORMAT = "transferkit.peft/1"
HEAD_MODULE = "transferkit_head"
PEFT_TYPES = {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING", "lora": "LORA"}
# Why PEFT cannot hold the other kinds of expert.
NOT_IN_PEFT = {
    "adapter": "a bottleneck adapter after every feed-forward block, which PEFT does not implement",
    "ept": "EPT's low-rank embedding update and gated multi-space projection, which PEFT does not implement",
    "mept": "MEPT's routed per-layer prompt experts, which PEFT does not implement",
    "mixture": "a gated mixture of source experts, which a single PEFT adapter cannot hold",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Classification heads PEFT saves for SEQ_CLS adapters: they read the CLS pooler, which transferkit's head does not.
FOREIGN_HEADS = ("classifier", "score")
_UNUSED_TOKEN = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")
IMPORT_COST = {"cost_note": "imported: trained outside transferkit, so its training cost is unknown"}


@dataclass(frozen=True)
class PeftRecipe:
    """How to get transferkit's logits from the PEFT model (stored in transferkit.json, read by the model card's code)."""

    head_module: str | None  # modules_to_save module holding the head; None: the expert has no head
    num_outputs: int | None
    prepend_token_ids: list[int]  # put in front of the input (LoRA's task prompt as trainable tokens)
    skip_leading_outputs: int  # leading positions of last_hidden_state that are not real tokens
    position_shift: int  # pass position_ids = arange(T) - shift (prefix: PEFT adds the prefix length)
    fold_token_types: bool  # PEFT drops token_type_ids here: add their embeddings to inputs_embeds
    task_prompt_length: int


# The model card's code, run as written by the tests.
RECIPE_CODE = '''\
import json

import torch
from peft import PeftModel
from transformers import AutoModel


def load_exported(adapter_dir, base_model):
    """The PEFT model with transferkit's head attached, and the recipe from transferkit.json."""
    with open(f"{adapter_dir}/transferkit.json") as handle:
        recipe = json.load(handle)["recipe"]
    base = AutoModel.from_pretrained(base_model)
    if recipe["head_module"]:  # an empty head; PEFT fills it from the adapter (modules_to_save)
        setattr(base, recipe["head_module"], torch.nn.Linear(base.config.hidden_size, recipe["num_outputs"]))
    return PeftModel.from_pretrained(base, adapter_dir).eval(), recipe


@torch.no_grad()
def transferkit_logits(model, recipe, batch):
    """transferkit's logits (or pooled features, for an expert without head) for a tokenizer batch (return_tensors="pt")."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    types = batch.get("token_type_ids")
    lead = torch.tensor(recipe["prepend_token_ids"], dtype=ids.dtype).expand(ids.shape[0], -1)
    ids = torch.cat([lead, ids], dim=1)
    kwargs = {"attention_mask": torch.cat([torch.ones_like(lead), mask], dim=1)}
    if types is not None:
        types = torch.cat([torch.zeros_like(lead), types], dim=1)
    if recipe["fold_token_types"] and types is not None:  # PEFT's prompt-learning forward drops token_type_ids
        embeddings = model.get_base_model().embeddings
        kwargs["inputs_embeds"] = (
            embeddings.word_embeddings(ids) + embeddings.token_type_embeddings(types) - embeddings.token_type_embeddings.weight[0]
        )
    else:
        kwargs["input_ids"] = ids
        if types is not None:
            kwargs["token_type_ids"] = types
    if recipe["position_shift"]:  # PEFT adds the prefix length to position ids; this prefix counts from 0
        kwargs["position_ids"] = torch.arange(ids.shape[1]).expand(ids.shape[0], -1) - recipe["position_shift"]
    hidden = model(**kwargs).last_hidden_state[:, recipe["skip_leading_outputs"]:]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return getattr(model.get_base_model(), recipe["head_module"])(pooled) if recipe["head_module"] else pooled
'''


# export


def export_peft(registry: RegistryStore, expert: ExpertRecord, backbone: Backbone, out: Path) -> dict[str, Any]:
    """Write `expert` as a PEFT adapter folder at `out`; refuses experts PEFT cannot represent exactly."""
    if expert.method not in PEFT_TYPES:
        reason = NOT_IN_PEFT.get(expert.method, f"the {expert.method} method, which has no PEFT counterpart")
        raise InvalidInputError(
            f"expert {expert.name} cannot be exported for PEFT: it is {reason}; "
            f"PEFT holds {', '.join(PEFT_TYPES)} experts (use --format bundle for this one)"
        )
    tensors = read_expert(registry, expert, backbone)
    config, weights, recipe = _to_peft(expert, tensors, backbone)
    task = registry.get_task(expert.task_name)
    side = {
        "format": SIDE_FORMAT,
        "transferkit": __version__,
        "expert": {key: value for key, value in expert.to_dict().items() if key not in ("artifact_uri", "extra")},
        "task": task.to_dict() if task is not None else {"name": expert.task_name},
        "label_names": expert.extra.get("label_names"),
        "backbone": expert.backbone,
        "recipe": asdict(recipe),
    }
    import safetensors.torch

    files = {
        ADAPTER_CONFIG: _config_bytes(config),
        ADAPTER_WEIGHTS: safetensors.torch.save({k: v.contiguous() for k, v in weights.items()}),
        SIDE_FILE: (json.dumps(side, indent=2, sort_keys=True) + "\n").encode(),
    }
    files[MODEL_CARD] = _model_card(expert, config, side, backbone).encode()
    write_new_folder(out, files)
    return {"format": "peft", "path": str(out), "peft_type": PEFT_TYPES[expert.method], "files": sorted(files),
            "experts": [{"id": expert.id, "name": expert.name}]}


def _to_peft(expert: ExpertRecord, tensors: dict[str, torch.Tensor], backbone: Backbone) -> tuple[Any, dict[str, torch.Tensor], PeftRecipe]:
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    own = {k[len(EXPERT_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXPERT_PREFIX)}
    task_prompt = tensors.get(TASK_PROMPT_TENSOR)
    prompt_length = 0 if task_prompt is None else task_prompt.shape[0]
    head = {k[len(HEAD_PREFIX + "linear."):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    hidden, layers, heads = _dimensions(backbone)
    common = {
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": public_model_name(backbone.fingerprint),
        "revision": backbone.fingerprint.revision,
        "inference_mode": True,
        "modules_to_save": [HEAD_MODULE] if head else None,
    }
    shape = {"token_dim": hidden, "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": layers}
    num_outputs = int(head["bias"].shape[0]) if head else None
    if expert.method == "prompt":
        virtual = own["prompt"] if task_prompt is None else torch.cat([task_prompt, own["prompt"]])
        config = PromptTuningConfig(num_virtual_tokens=virtual.shape[0], **shape, **common)
        weights, head_prefix = {"prompt_embeddings": virtual}, "base_model."
        recipe = PeftRecipe(HEAD_MODULE if head else None, num_outputs, [], virtual.shape[0], 0, True, prompt_length)
    elif expert.method == "prefix":
        if task_prompt is not None:
            raise InvalidInputError(
                f"expert {expert.name} cannot be exported for PEFT: a PEFT prefix adapter has no input tokens to carry its "
                f"{prompt_length}-token task-description prompt; train the prefix expert with --task-prompt-length 0, "
                "or use --format bundle"
            )
        length = expert.config["num_virtual_tokens"]
        pairs = [torch.stack([own[f"prefix.layer{i}.key"], own[f"prefix.layer{i}.value"]]) for i in range(layers)]
        # PEFT's layout: per virtual token, layer by layer, key then value (get_prompt's view + permute).
        prefix = torch.stack(pairs).permute(2, 0, 1, 3).reshape(length, layers * 2 * hidden)
        config = PrefixTuningConfig(num_virtual_tokens=length, encoder_hidden_size=hidden, prefix_projection=False, **shape, **common)
        weights, head_prefix = {"prompt_embeddings": prefix}, "base_model."
        shift = 0 if expert.config.get("position_offset") else length
        recipe = PeftRecipe(HEAD_MODULE if head else None, num_outputs, [], 0, shift, True, 0)
    else:
        modules = sorted({name.rsplit(".lora_", 1)[0] for name in own})
        weights = {f"base_model.model.{name}": tensor for name, tensor in own.items()}
        prepend: list[int] = []
        trainable = None
        if task_prompt is not None:
            prepend = unused_token_ids(backbone, prompt_length, expert.name)
            embedding = input_embedding_name(backbone)
            weights[f"base_model.model.{embedding}.token_adapter.trainable_tokens_delta"] = task_prompt
            trainable = {embedding: prepend}
        config = LoraConfig(
            r=expert.config["r"], lora_alpha=expert.config["alpha"], lora_dropout=expert.config["dropout"],
            target_modules=modules, bias="none", trainable_token_indices=trainable, **common,
        )
        head_prefix = "base_model.model."
        recipe = PeftRecipe(HEAD_MODULE if head else None, num_outputs, prepend, len(prepend), 0, False, prompt_length)
    for key, tensor in head.items():
        weights[f"{head_prefix}{HEAD_MODULE}.{key}"] = tensor
    return config, weights, recipe


def _dimensions(backbone: Backbone) -> tuple[int, int, int]:
    config = backbone.model.config
    return backbone.hidden_size, backbone.fingerprint.num_layers, int(config.num_attention_heads)


def unused_token_ids(backbone: Backbone, count: int, name: str) -> list[int]:
    """Ids of `count` unused vocabulary entries ([unused0], ...) whose embeddings can carry a task prompt."""
    ids = sorted(i for token, i in backbone.tokenizer.get_vocab().items() if _UNUSED_TOKEN.match(token))
    if len(ids) < count:
        raise InvalidInputError(
            f"expert {name} cannot be exported for PEFT: its {count}-token task prompt would ride on unused vocabulary "
            f"entries, and this backbone's vocabulary has {len(ids)}; train with --task-prompt-length 0 or use --format bundle"
        )
    return ids[:count]


def input_embedding_name(backbone: Backbone) -> str:
    embedding = backbone.input_embeddings()
    return next(name for name, module in backbone.model.named_modules() if module is embedding)


def _config_bytes(config: Any) -> bytes:
    """adapter_config.json exactly as PEFT's own save_pretrained writes it."""
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        return (Path(folder) / ADAPTER_CONFIG).read_bytes()


def _model_card(expert: ExpertRecord, config: Any, side: dict, backbone: Backbone) -> str:
    base = config.base_model_name_or_path
    labels = side.get("label_names")
    task = side["task"]
    return f"""---
library_name: peft
base_model: {base}
tags: [transferkit, {PEFT_TYPES[expert.method].lower().replace("_", "-")}]
---
# {expert.name}: a transferkit {expert.method} expert for {expert.task_name}

Exported by transferkit {__version__} from expert `{expert.id}` (task: {task.get("description", "?")};
labels: {", ".join(labels) if labels else "regression" if side["recipe"]["num_outputs"] == 1 else "-"}).
Backbone: `{base}` at revision `{config.revision}`, weights sha256 `{backbone.fingerprint.weights_sha256[:16]}…`.

A PEFT `{PEFT_TYPES[expert.method]}` adapter for the base model's encoder (`AutoModel`, task type
`FEATURE_EXTRACTION`). transferkit's task head is saved as the `modules_to_save` module
`{HEAD_MODULE}`; it reads the mean of the real tokens' last hidden states, not BERT's CLS pooler,
so do not load this adapter into `AutoModelForSequenceClassification`. `transferkit.json` holds the
recipe below (virtual tokens to skip, ids to prepend, position shift, token types) and the expert's provenance.
This code returns the same logits as transferkit (checked to 1e-5 by its tests):

```python
{RECIPE_CODE}
# model, recipe = load_exported("path/to/this/folder", "{base}")
# batch = AutoTokenizer.from_pretrained("{base}")(["first text"], ["optional second text"], return_tensors="pt")
# logits = transferkit_logits(model, recipe, batch)
```
"""


# import


@dataclass(frozen=True)
class ImportedAdapter:
    """An adapter converted to a transferkit expert, checked, not yet stored."""

    method: str
    config: dict
    tensors: dict[str, torch.Tensor]
    dropped: list[str]


def import_peft(
    registry: RegistryStore,
    folder: Path,
    *,
    task: str | None,
    name: str | None,
    model: str | None,
    command: list[str],
    limits: ImportLimits = DEFAULT_LIMITS,
) -> tuple[ExpertRecord, dict]:
    """Store the PEFT adapter in `folder` as an expert of run kind `import`; everything is checked before the first write."""
    files = read_folder_files(folder, [ADAPTER_CONFIG, ADAPTER_WEIGHTS, SIDE_FILE], limits)
    if ADAPTER_CONFIG not in files:
        raise InvalidInputError(
            f"{folder} has no {ADAPTER_CONFIG}; pass a folder saved by PEFT (save_pretrained) or by `transferkit export --format peft`"
        )
    if ADAPTER_WEIGHTS not in files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise InvalidInputError(
                f"{folder} holds its weights only as {', '.join(pickled)}, a pickle file that can run code when loaded; "
                "transferkit reads safetensors only (re-save the adapter with safe_serialization=True where you trust it)"
            )
        raise InvalidInputError(f"{folder} has no {ADAPTER_WEIGHTS}; pass a folder saved by PEFT's save_pretrained")
    config = parse_json(files[ADAPTER_CONFIG], f"{folder / ADAPTER_CONFIG}", limits)
    if not isinstance(config, dict):
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG} must be a JSON object")
    side = _read_side(files, folder, limits)
    tensors, _ = load_safetensors(files[ADAPTER_WEIGHTS], str(folder / ADAPTER_WEIGHTS))
    backbone = _import_backbone(config, side, model, folder)
    adapter = _from_peft(config, tensors, side, backbone, folder)
    spec_or_record = _import_task(task, side)
    label_names = _label_names(spec_or_record, side)
    head_rows = adapter.tensors.get(HEAD_PREFIX + "linear.bias")
    if head_rows is not None and isinstance(spec_or_record, TaskSpec) and head_rows.shape[0] != spec_or_record.num_labels:
        raise InvalidInputError(
            f"the adapter's head has {head_rows.shape[0]} outputs but task {spec_or_record.name} has {spec_or_record.num_labels}"
        )
    task_name = spec_or_record.name
    origin = side["expert"] if side else None
    chosen = expert_name(registry, name, (origin or {}).get("name") or _default_name(folder, adapter.method))
    fingerprint = backbone.fingerprint.to_dict()
    identity = {**fingerprint, "name": config.get("base_model_name_or_path") or fingerprint["name"],
                "revision": config.get("revision", fingerprint["revision"])}
    metadata = artifact_metadata(adapter.method, adapter.config, backbone.backbone_id, task_name,
                                 0 if head_rows is None else int(head_rows.shape[0]))
    staged = ExpertRecord(
        id="staged", name=chosen, task_name=task_name, method=adapter.method, config=adapter.config, backbone=identity,
        backbone_id=backbone.backbone_id, artifact_uri="", artifact_sha256="", artifact_bytes=0,
        trainable_params=sum(t.numel() for t in adapter.tensors.values()), metrics={}, run_id="",
        created_at=datetime.now(timezone.utc), extra={},
    )
    reader = StagedExperts()
    reader.add(staged, adapter.tensors, metadata)
    check_expert(reader, staged, backbone)

    source = {
        "format": "peft",
        "path": str(folder.resolve()),
        "peft_type": config["peft_type"],
        "peft_version": config.get("peft_version"),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "revision": config.get("revision"),
        "files": {key: hashlib.sha256(data).hexdigest() for key, data in sorted(files.items())},
        "dropped": adapter.dropped,
        "origin": _origin(origin) if origin else None,
    }
    lineage = []
    if origin and _is_stored_copy(registry, origin.get("id"), adapter.tensors):
        lineage.append((origin["id"], "imported-from", None))
    # Nothing was written so far: the task, the run and the expert follow.
    if isinstance(spec_or_record, TaskSpec):
        ensure_task_record(registry, spec_or_record)
    elif registry.get_task(task_name) is None:
        registry.upsert_task(spec_or_record)
    run = registry.start_run("import", command, {"format": "peft", "source": source}, None, code_version(), package_versions(), {})
    try:
        expert = registry.register_expert(
            run_id=run.id, name=chosen, task_name=task_name, method=adapter.method, config=adapter.config,
            backbone=identity, backbone_id=backbone.backbone_id, trainable_params=staged.trainable_params, metrics={},
            tensors=adapter.tensors, tensor_metadata=metadata, lineage=lineage,
            extra={
                "imported_from": source,
                "label_names": label_names,
                "task_prompt_length": 0 if TASK_PROMPT_TENSOR not in adapter.tensors else adapter.tensors[TASK_PROMPT_TENSOR].shape[0],
                "has_head": head_rows is not None,
            },
            cost=IMPORT_COST,
        )
    except BaseException as error:
        registry.finish_run(run.id, status="failed", cost={}, error=f"{type(error).__name__}: {error}"[:500])
        raise
    return expert, source


def _read_side(files: dict[str, bytes], folder: Path, limits: ImportLimits) -> dict | None:
    if SIDE_FILE not in files:
        return None
    side = parse_json(files[SIDE_FILE], str(folder / SIDE_FILE), limits)
    if not isinstance(side, dict) or side.get("format") != SIDE_FORMAT:
        raise InvalidInputError(f"{folder / SIDE_FILE} is not a transferkit export description (format {SIDE_FORMAT})")
    expected = {"expert": dict, "task": dict, "backbone": dict, "recipe": dict}
    for key, kind in expected.items():
        if not isinstance(side.get(key), kind):
            raise InvalidInputError(f"{folder / SIDE_FILE}: field {key!r} is missing or malformed")
    recipe = side["recipe"]
    if set(recipe) != {f for f in PeftRecipe.__dataclass_fields__}:
        raise InvalidInputError(f"{folder / SIDE_FILE}: the recipe's fields are not transferkit's")
    if not isinstance(recipe["task_prompt_length"], int) or recipe["task_prompt_length"] < 0 or not (
        isinstance(recipe["prepend_token_ids"], list) and all(isinstance(i, int) for i in recipe["prepend_token_ids"])
    ):
        raise InvalidInputError(f"{folder / SIDE_FILE}: the recipe's task prompt fields are malformed")
    return side


def _import_backbone(config: dict, side: dict | None, model: str | None, folder: Path) -> Backbone:
    base, revision = config.get("base_model_name_or_path"), config.get("revision")
    if not isinstance(base, (str, type(None))) or not isinstance(revision, (str, type(None))):
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path and revision must be strings")
    if model is None and not base:
        raise InvalidInputError(f"{folder / ADAPTER_CONFIG} names no base model; pass --model")
    if side is None and model is not None and base and canonical_model_reference(model) != canonical_model_reference(base):
        raise IncompatibleBackboneError(
            f"the adapter in {folder} was made for base model {base!r} (revision {revision}), but --model is {model!r}; "
            "omit --model to load the adapter's own base model"
        )
    reference = model if model is not None else base
    if model is None and base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
        raise InvalidInputError(f"the adapter's base model {base!r} is not on this machine; pass --model with a copy of it")
    # A Hub model loads at the adapter's revision; a local folder is the copy the user chose (--model) or the adapter names.
    backbone = load_backbone(None) if reference == PACKAGED_MODEL_ID else load_backbone(reference, revision)
    if side is not None and side["backbone"].get("backbone_id") != backbone.backbone_id:
        backbone.require_compatible(str(side["backbone"].get("backbone_id")), f"the expert exported to {folder}")
    return backbone


def _from_peft(config: dict, tensors: dict[str, torch.Tensor], side: dict | None, backbone: Backbone, folder: Path) -> ImportedAdapter:
    peft_type = config.get("peft_type")
    methods = {value: key for key, value in PEFT_TYPES.items()}
    if peft_type not in methods:
        raise InvalidInputError(
            f"the adapter in {folder} is PEFT {peft_type}, which transferkit cannot represent; "
            f"it imports {', '.join(methods)}"
        )
    hidden, layers, heads = _dimensions(backbone)
    where = f"the {peft_type} adapter in {folder}"
    _require_fit(config, "token_dim", hidden, where, "hidden size")
    _require_fit(config, "num_transformer_submodules", 1, where, "transformer submodules")
    recipe = side["recipe"] if side else None
    prompt_length = recipe["task_prompt_length"] if recipe else 0
    base_prefix = "base_model." if peft_type != "LORA" else "base_model.model."
    method_tensors, head, dropped = _split_saved_modules(config, tensors, base_prefix, where)
    out: dict[str, torch.Tensor] = {}
    if peft_type in ("PROMPT_TUNING", "PREFIX_TUNING"):
        if set(method_tensors) != {"prompt_embeddings"}:
            raise InvalidInputError(f"{where} has tensors {sorted(method_tensors)[:3]}; a {peft_type} adapter holds prompt_embeddings")
        embeddings = method_tensors["prompt_embeddings"].float()
        _require_fit(config, "num_virtual_tokens", embeddings.shape[0], where, "virtual tokens")
    if peft_type == "PROMPT_TUNING":
        if embeddings.dim() != 2 or embeddings.shape[1] != hidden or embeddings.shape[0] <= prompt_length:
            raise InvalidInputError(f"{where}: prompt_embeddings of shape {tuple(embeddings.shape)} does not fit hidden size {hidden}")
        if prompt_length:
            out[TASK_PROMPT_TENSOR] = embeddings[:prompt_length].clone()
        out[EXPERT_PREFIX + "prompt"] = embeddings[prompt_length:].clone()
        method_config = {"num_virtual_tokens": embeddings.shape[0] - prompt_length}
    elif peft_type == "PREFIX_TUNING":
        _require_fit(config, "num_layers", layers, where, "layers")
        _require_fit(config, "num_attention_heads", heads, where, "attention heads")
        if embeddings.dim() != 2 or embeddings.shape[1] != layers * 2 * hidden:
            raise InvalidInputError(
                f"{where}: prompt_embeddings of shape {tuple(embeddings.shape)} does not fit {layers} layers of hidden size {hidden}"
            )
        per_layer = embeddings.reshape(embeddings.shape[0], layers, 2, hidden).permute(1, 2, 0, 3)
        for index in range(layers):
            out[f"{EXPERT_PREFIX}prefix.layer{index}.key"] = per_layer[index, 0].contiguous()
            out[f"{EXPERT_PREFIX}prefix.layer{index}.value"] = per_layer[index, 1].contiguous()
        method_config = {"num_virtual_tokens": embeddings.shape[0], "share": "none", "position_offset": True}
    else:
        method_tensors = {_backbone_relative(key, backbone): tensor for key, tensor in method_tensors.items()}
        method_config = _lora_config(config, method_tensors, where)
        tokens = {k: v for k, v in method_tensors.items() if k.endswith(".token_adapter.trainable_tokens_delta")}
        if tokens:
            expected = {input_embedding_name(backbone): recipe["prepend_token_ids"]} if recipe else None
            if config.get("trainable_token_indices") != expected or len(tokens) != 1 or not prompt_length:
                raise InvalidInputError(
                    f"{where} retrains vocabulary embeddings (trainable_token_indices), which a transferkit expert cannot hold"
                )
            out[TASK_PROMPT_TENSOR] = next(iter(tokens.values())).float().clone()
        for key, tensor in method_tensors.items():
            if key not in tokens:
                out[EXPERT_PREFIX + key] = tensor.float().clone()
    if side:
        method_config = side["expert"].get("config")
        if not isinstance(method_config, dict) or side["expert"].get("method") != methods[peft_type]:
            raise InvalidInputError(f"{folder / SIDE_FILE}: the expert's method or config does not match the adapter")
    for key, tensor in head.items():
        out[HEAD_PREFIX + "linear." + key] = tensor.float().clone()
    return ImportedAdapter(methods[peft_type], method_config, out, dropped)


def _backbone_relative(key: str, backbone: Backbone) -> str:
    """A tensor name relative to the encoder: adapters made on e.g. BertForSequenceClassification name it `bert.<...>`."""
    prefix = f"{getattr(backbone.model, 'base_model_prefix', '')}."
    return key[len(prefix):] if prefix != "." and key.startswith(prefix) else key


def _require_fit(config: dict, key: str, expected: int, where: str, what: str) -> None:
    value = config.get(key)
    if value is not None and value != expected:
        raise IncompatibleBackboneError(f"{where} was made for {value} {what}, but the backbone has {expected}; pass the adapter's own base model")


def _split_saved_modules(
    config: dict, tensors: dict[str, torch.Tensor], base_prefix: str, where: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """(method tensors without PEFT's prefix, transferkit head, dropped foreign heads) from an adapter's tensors."""
    saved = config.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(m, str) for m in saved):
        raise InvalidInputError(f"{where}: modules_to_save must be a list of module names")
    method, head, dropped = {}, {}, set()
    for key, tensor in tensors.items():
        if key == "prompt_embeddings":
            method[key] = tensor
            continue
        if not key.startswith(base_prefix):
            raise InvalidInputError(f"{where} has a tensor named {key!r}, which PEFT does not write")
        inner = key[len(base_prefix):]
        module, _, parameter = inner.rpartition(".")
        if module in saved or module.rsplit(".", 1)[-1] in saved:
            if module == HEAD_MODULE and parameter in ("weight", "bias"):
                head[parameter] = tensor
            elif module.rsplit(".", 1)[-1] in FOREIGN_HEADS:
                dropped.add(module)
            else:
                raise InvalidInputError(
                    f"{where} retrains base-model module {module!r} (modules_to_save), which a transferkit expert cannot hold"
                )
        else:
            method[inner] = tensor
    if head and set(head) != {"weight", "bias"}:
        raise InvalidInputError(f"{where}: the {HEAD_MODULE} module needs both weight and bias")
    notes = [f"{module}: a sequence-classification head on the CLS pooler, which transferkit's mean-pooled head cannot reproduce"
             for module in sorted(dropped)]
    return method, head, notes


# LoRA settings that change what the adapter computes and that a transferkit LoRA expert cannot express.
_LORA_UNSUPPORTED: dict[str, Any] = {
    "use_dora": lambda v: bool(v), "lora_bias": lambda v: bool(v), "bias": lambda v: v not in (None, "none"),
    "fan_in_fan_out": lambda v: bool(v), "rank_pattern": lambda v: bool(v), "alpha_pattern": lambda v: bool(v),
    "layer_replication": lambda v: bool(v), "target_parameters": lambda v: bool(v), "use_qalora": lambda v: bool(v),
    "alora_invocation_tokens": lambda v: bool(v), "use_bdlora": lambda v: bool(v), "megatron_config": lambda v: bool(v),
}


def _lora_config(config: dict, tensors: dict[str, torch.Tensor], where: str) -> dict:
    used = sorted(key for key, unsupported in _LORA_UNSUPPORTED.items() if unsupported(config.get(key)))
    if used:
        raise InvalidInputError(f"{where} uses LoRA settings transferkit cannot reproduce: {', '.join(used)}")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise InvalidInputError(f"{where}: r must be a positive integer and lora_alpha a number")
    if config.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r); transferkit by alpha / r
        alpha = alpha * math.sqrt(rank)
    pairs = [key.rsplit(".lora_", 1)[0] for key in tensors if re.search(r"\.lora_[AB]\.weight$", key)]
    others = [key for key in tensors if not re.search(r"\.lora_[AB]\.weight$|\.token_adapter\.trainable_tokens_delta$", key)]
    if others or not pairs:
        raise InvalidInputError(f"{where} has tensors transferkit's LoRA cannot hold: {sorted(others)[:3] or 'no lora_A/lora_B pairs'}")
    dropout = config.get("lora_dropout") or 0.0
    return {"r": rank, "alpha": float(alpha), "dropout": float(dropout), "target_modules": sorted(set(pairs))}


def _import_task(task: str | None, side: dict | None) -> TaskSpec | TaskRecord:
    if task is not None:
        return resolve_task(task)
    if side is None:
        raise InvalidInputError("the adapter does not say which task it was trained for; pass --task (see `transferkit tasks`)")
    recorded = side["task"]
    try:
        return resolve_task(str(recorded.get("name")))
    except NotFoundError:
        pass
    try:  # a task another registry defined: keep its description and embedding
        record = TaskRecord(**recorded)
    except TypeError:
        raise InvalidInputError(f"the exported task {recorded.get('name')!r} is not in the catalog and its record is incomplete; pass --task") from None
    embedding_ok = record.embedding is None or (
        isinstance(record.embedding, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in record.embedding)
    )
    if not (isinstance(record.name, str) and isinstance(record.description, str) and isinstance(record.spec, dict)
            and embedding_ok and isinstance(record.embedder_id, (str, type(None)))):
        raise InvalidInputError(f"the exported task record for {record.name!r} is malformed; pass --task")
    return record


def _label_names(task: TaskSpec | TaskRecord, side: dict | None) -> list[str] | None:
    if isinstance(task, TaskSpec):
        return list(task.label_names) if task.label_names else None
    names = side.get("label_names") if side else None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _default_name(folder: Path, method: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-") or "peft"
    return f"{stem}-{method}"


def _origin(expert: dict) -> dict:
    """Who the exported expert was, and what it scored where it was trained (its metrics there, not measured here)."""
    metrics = expert.get("metrics") if isinstance(expert.get("metrics"), dict) else {}
    return {
        **{key: expert.get(key) for key in ("id", "name", "task_name", "method", "created_at")},
        "metrics": {key: metrics.get(key) for key in ("primary", "dev", "test")},
    }


def _is_stored_copy(registry: RegistryStore, expert_id: object, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the registry holds the expert the export names, with exactly these tensors (a claim is not enough)."""
    if not isinstance(expert_id, str):
        return False
    try:
        expert = registry.get_expert(expert_id)
    except (NotFoundError, InvalidInputError):
        return False
    if expert.id != expert_id:
        return False
    stored, _ = registry.load_expert_tensors(expert)
    return stored.keys() == tensors.keys() and all(torch.equal(stored[k], tensors[k]) for k in stored)
