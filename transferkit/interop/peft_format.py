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
- Each method with a PEFT counterpart maps itself (`transferkit.methods.<method>.peft`, registered as its
  `MethodType.peft`): prompt tuning carries [task-description prompt][method prompt] as its virtual tokens,
  LoRA carries the task prompt as PEFT trainable tokens on unused vocabulary entries, prefix tuning shifts
  position ids back by the prefix length (and refuses a task prompt, which a prefix adapter has no place for).
- PEFT's prompt-learning forward for FEATURE_EXTRACTION drops `token_type_ids`; the recipe adds the
  token-type embeddings to the input embeddings instead, so sentence pairs come out right.
Methods without a PEFT counterpart (adapters, EPT, MEPT) and mixtures are refused with the reason.

Import accepts what PEFT saves for the mapped methods (prompt tuning, prefix tuning and LoRA) (safetensors only: a folder with
just a pickled `adapter_model.bin` is refused without being opened). The backbone is the adapter's base
model at its revision (or `--model`, which must be the same model); tensors are checked against it.
"""

from __future__ import annotations

import hashlib
import json
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
from transferkit.interop.output import write_new_folder
from transferkit.interop.staging import TASK_PROMPT_TENSOR, StagedExperts, check_expert
from transferkit.experts import artifact_metadata, expert_name, read_expert
from transferkit.interop.untrusted import DEFAULT_LIMITS, ImportLimits, load_safetensors, parse_json, read_folder_files
from transferkit.methods import METHODS, MethodType
from transferkit.methods.peft import HEAD_MODULE, PeftExportInput, PeftImportInput, PeftRecipe, dimensions, require_fit
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
# Why PEFT cannot hold kinds of expert that are not methods (a method says so itself: `MethodType.not_in_peft`).
NOT_IN_PEFT = {"mixture": "a gated mixture of source experts, which a single PEFT adapter cannot hold"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Classification heads PEFT saves for SEQ_CLS adapters: they read the CLS pooler, which transferkit's head does not.
FOREIGN_HEADS = ("classifier", "score")
IMPORT_COST = {"cost_note": "imported: trained outside transferkit, so its training cost is unknown"}


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


def peft_methods() -> dict[str, MethodType]:
    """The registered methods with a PEFT counterpart, by PEFT type."""
    return {method.peft.peft_type: method for method in METHODS.values() if method.peft is not None}


def export_peft(registry: RegistryStore, expert: ExpertRecord, backbone: Backbone, out: Path) -> dict[str, Any]:
    """Write `expert` as a PEFT adapter folder at `out`; refuses experts PEFT cannot represent exactly."""
    method = METHODS.get(expert.method)
    if method is None or method.peft is None:
        reason = (method.not_in_peft if method is not None else None) or NOT_IN_PEFT.get(
            expert.method, f"the {expert.method} method, which has no PEFT counterpart")
        raise InvalidInputError(
            f"expert {expert.name} cannot be exported for PEFT: it is {reason}; "
            f"PEFT holds {', '.join(m.name for m in peft_methods().values())} experts (use --format bundle for this one)"
        )
    tensors = read_expert(registry, expert, backbone)
    config, weights, recipe = _to_peft(expert, method, tensors, backbone)
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
    files[MODEL_CARD] = _model_card(expert, method.peft.peft_type, config, side, backbone).encode()
    write_new_folder(out, files)
    return {"format": "peft", "path": str(out), "peft_type": method.peft.peft_type, "files": sorted(files),
            "experts": [{"id": expert.id, "name": expert.name}]}


def _to_peft(expert: ExpertRecord, method: MethodType, tensors: dict[str, torch.Tensor],
             backbone: Backbone) -> tuple[Any, dict[str, torch.Tensor], PeftRecipe]:
    """PEFT's config, tensors and the logits recipe: the method's own part from its mapping, then the head."""
    head = {k[len(HEAD_PREFIX + "linear."):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    common = {
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": public_model_name(backbone.fingerprint),
        "revision": backbone.fingerprint.revision,
        "inference_mode": True,
        "modules_to_save": [HEAD_MODULE] if head else None,
    }
    exported = method.peft.export(PeftExportInput(  # type: ignore[union-attr]
        name=expert.name, config=expert.config,
        tensors={k[len(EXPERT_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXPERT_PREFIX)},
        task_prompt=tensors.get(TASK_PROMPT_TENSOR), head_module=HEAD_MODULE if head else None,
        num_outputs=int(head["bias"].shape[0]) if head else None, backbone=backbone, common=common,
    ))
    weights = dict(exported.weights)
    for key, tensor in head.items():
        weights[f"{exported.head_prefix}{HEAD_MODULE}.{key}"] = tensor
    return exported.config, weights, exported.recipe


def _config_bytes(config: Any) -> bytes:
    """adapter_config.json exactly as PEFT's own save_pretrained writes it."""
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        return (Path(folder) / ADAPTER_CONFIG).read_bytes()


def _model_card(expert: ExpertRecord, peft_type: str, config: Any, side: dict, backbone: Backbone) -> str:
    base = config.base_model_name_or_path
    labels = side.get("label_names")
    task = side["task"]
    return f"""---
library_name: peft
base_model: {base}
tags: [transferkit, {peft_type.lower().replace("_", "-")}]
---
# {expert.name}: a transferkit {expert.method} expert for {expert.task_name}

Exported by transferkit {__version__} from expert `{expert.id}` (task: {task.get("description", "?")};
labels: {", ".join(labels) if labels else "regression" if side["recipe"]["num_outputs"] == 1 else "-"}).
Backbone: `{base}` at revision `{config.revision}`, weights sha256 `{backbone.fingerprint.weights_sha256[:16]}…`.

A PEFT `{peft_type}` adapter for the base model's encoder (`AutoModel`, task type
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
    methods = peft_methods()
    if peft_type not in methods:
        raise InvalidInputError(
            f"the adapter in {folder} is PEFT {peft_type}, which transferkit cannot represent; "
            f"it imports {', '.join(methods)}"
        )
    method = methods[peft_type]
    hidden = dimensions(backbone)[0]
    where = f"the {peft_type} adapter in {folder}"
    require_fit(config, "token_dim", hidden, where, "hidden size")
    require_fit(config, "num_transformer_submodules", 1, where, "transformer submodules")
    method_tensors, head, dropped = _split_saved_modules(config, tensors, method.peft.tensor_prefix, where)  # type: ignore[union-attr]
    loaded = method.peft.load(PeftImportInput(config, method_tensors, side["recipe"] if side else None, backbone, where))  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    if loaded.task_prompt is not None:
        out[TASK_PROMPT_TENSOR] = loaded.task_prompt
    out.update({EXPERT_PREFIX + key: tensor for key, tensor in loaded.tensors.items()})
    method_config = loaded.config
    if side:
        method_config = side["expert"].get("config")
        if not isinstance(method_config, dict) or side["expert"].get("method") != method.name:
            raise InvalidInputError(f"{folder / SIDE_FILE}: the expert's method or config does not match the adapter")
    for key, tensor in head.items():
        out[HEAD_PREFIX + "linear." + key] = tensor.float().clone()
    return ImportedAdapter(method.name, method_config, out, dropped)


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
