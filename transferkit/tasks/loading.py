"""Loading task data from local official files or the Hugging Face Hub (custom tasks: `transferkit.tasks.custom`).

`load_splits(task, data_dir, seed)` returns the train/dev/test `TaskSplits` of
a catalog task under the protocol in `transferkit.tasks.splits` (small tasks:
official validation halved into dev/test; large tasks MNLI, QQP, QNLI, SST-2:
1,000 seeded train examples as dev, official validation as test).

Local files (``data_dir`` given)
--------------------------------
The official distribution formats, so a user's own GLUE/SuperGLUE download
works as is. Folder names are matched case-insensitively and ignoring
punctuation (``SST-2``/``sst2``, ``STS-B``/``stsb``, ``glue_data``), file
names case-insensitively.
A task folder is looked for in ``<data_dir>/glue/`` or ``<data_dir>/glue_data/``
(SuperGLUE: ``<data_dir>/superglue/`` or ``<data_dir>/super_glue/``) and then
directly in ``<data_dir>``, e.g. ``<data_dir>/glue/rte/``,
``<data_dir>/glue_data/RTE/``, ``<data_dir>/RTE/``, ``<data_dir>/superglue/cb/``,
``<data_dir>/CB/``. The first folder holding the task's train or validation
file wins; a bare ``RTE/`` folder serves glue/rte if it holds .tsv files and
superglue/rte if it holds .jsonl files.

GLUE (``train.tsv`` + ``dev.tsv``; MNLI ``dev_matched.tsv``): read with `csv`
(tab-delimited, ``QUOTE_NONE``, UTF-8 with an optional BOM, as in MRPC), columns
by header name: CoLA has no header (source, label, original mark, sentence);
SST-2 sentence/label; MRPC ``#1 String``/``#2 String``/``Quality``; QQP
question1/question2/is_duplicate; STS-B sentence1/sentence2/score; MNLI
sentence1/sentence2/gold_label; QNLI question/sentence/label; RTE and WNLI
sentence1/sentence2/label. A row with the wrong number of fields is an error
naming file and line, except in QQP, whose official train.tsv is known to hold
a few malformed rows (transformers' QqpProcessor skips them too): those are
skipped and counted in the protocol (``skipped_malformed_rows``). GLUE test
files are unlabeled and never read.

SuperGLUE (``train.jsonl`` + ``val.jsonl``): one JSON object per line.

Labels may be label names (matched case-insensitively, surrounding spaces
ignored) or integer indices (ASCII digits or JSON integers), as the official
files mix both ("entailment", "0", JSON booleans for two-class tasks); anything
else is an error naming file and line. STS-B scores are finite floats rounded to
6 decimals (the Hub stores them as float32).

Malformed input is never silently repaired: a split file without examples, a
row with the wrong number of fields, a label outside the label set, a missing or
non-text field, invalid JSON or UTF-8, and a .tsv field longer than Python's csv
limit (131,072 characters) are each a one-line `DataError` naming the file and
line, with offending values shown shortened. Blank lines are not rows. The only
rows ever skipped are QQP's known malformed ones, counted in the protocol.

How rows become model inputs (`Example.texts`, one string or a pair)
--------------------------------------------------------------------
Every source row is first put in the Hub's column layout, and one converter per
task, shared by local files and the Hub, builds the `Example`:

* single sentence (CoLA, SST-2) and pair tasks: the input fields in catalog
  order, e.g. (premise, hypothesis), (question, passage) for BoolQ.
* COPA: (``"<premise> What was the <cause|effect>?"``,
  ``"choice1: <choice1> choice2: <choice2>"``), label 0/1 = which choice is
  right: one pair-classification example per question, whose second text
  names the options exactly as the label names ("choice1", "choice2") do.
* MultiRC: one example per answer option: (paragraph, ``"<question> <answer>"``),
  label = whether the option is correct, group ``"<paragraph idx>-<question idx>"``
  (used for exact match and to keep a question's options on one side of the
  dev/test cut). The local nested paragraph/questions/answers record is
  flattened into the Hub's per-option rows first.
* WiC: (``"<word>: <sentence1>"``, sentence2).
* WSC: (text, ``"Does '<span2_text>' refer to '<span1_text>'?"``) - span2 is
  the pronoun, span1 the candidate noun phrase.

Official files the data pack lacks: derived subsets (MNLI, QNLI, QQP)
--------------------------------------------------------------------
The big official MNLI, QQP and QNLI-train files are not in the shared pack.
When a split's official file is absent and
``<data_dir>/derived/powerfulpromptft_glue_pretrain/<TASK>/{train,dev}.json``
exists (PowerfulPromptFT's random 9k-train / 1k-dev re-serialization:
``{"0": {"text_a", "text_b", "label"}, ...}``), it stands in for that split:
train.json for the official train (then 1,000 held out as dev as usual) and
dev.json for the official validation (test). The official file is preferred
per split whenever present; the protocol then records
``"source": "derived-subset"``, which file served which split, and a note.
MNLI and QQP: both splits derived -> train 7,999 / dev 1,000 / test 1,000;
their test comes from the same re-serialization, not from the official
validation set (for QNLI, dev.json shares no pair with the official dev.tsv, so
the subsets look drawn from official train), so numbers are not comparable to
published ones. QNLI: train and dev come from train.json, test is the official
dev.tsv (5,463); because the two sources differ, any derived train example
whose texts also occur in the official validation is dropped and counted
(``overlap_dropped_from_train``) - on the shared pack there are none. With official files, MNLI's test set is the matched validation set
(dev_matched.tsv; ``validation_split`` in the protocol).

Hugging Face Hub (``data_dir`` None)
------------------------------------
``datasets.load_dataset("nyu-mll/glue", <task>)`` or
``("aps/super_glue", <task>)`` (WSC: ``wsc.fixed``), splits train and
validation (MNLI: validation_matched). A Hub failure (e.g. offline) is a
`DataError` suggesting ``--data-dir`` / ``TRANSFERKIT_DATA_DIR``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from transferkit.errors import DataError, InvalidInputError, NotFoundError
from transferkit.tasks.catalog import TaskSpec
from transferkit.tasks.custom import CustomTask, load_custom_splits
from transferkit.tasks.labels import ASCII_INDEX, parse_label, shown
from transferkit.tasks.readers import delimited_rows, jsonl_rows, read_text
from transferkit.tasks.splits import Example, TaskSplits, split_large, split_small, subsample_train

Row = Mapping[str, Any]
Located = tuple[str, Row]  # (where the row came from, for messages; the row in Hub layout)

_FIX_IT = (
    "pass --data-dir pointing at an official GLUE/SuperGLUE download that has it, "
    "or unset --data-dir/TRANSFERKIT_DATA_DIR to load from the Hugging Face Hub"
)


def _fields(row: Row, task: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    return tuple(row[name] for name in task.input_fields), None


def _copa(row: Row, task: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    return (f"{row['premise']} What was the {row['question']}?", f"choice1: {row['choice1']} choice2: {row['choice2']}"), None


def _multirc(row: Row, task: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    idx = row["idx"]
    return (row["paragraph"], f"{row['question']} {row['answer']}"), f"{idx['paragraph']}-{idx['question']}"


def _wic(row: Row, task: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    return (f"{row['word']}: {row['sentence1']}", row["sentence2"]), None


def _wsc(row: Row, task: TaskSpec) -> tuple[tuple[str, ...], str | None]:
    return (row["text"], f"Does '{row['span2_text']}' refer to '{row['span1_text']}'?"), None


def _multirc_options(record: Row) -> list[Row]:
    """Flatten one official MultiRC paragraph record into the Hub's one-row-per-answer-option layout."""
    passage = record["passage"]
    return [
        {
            "paragraph": passage["text"],
            "question": question["question"],
            "answer": answer["text"],
            "idx": {"paragraph": record["idx"], "question": question["idx"], "answer": answer["idx"]},
            "label": answer["label"],
        }
        for question in passage["questions"]
        for answer in question["answers"]
    ]


def _wsc_flat(record: Row) -> list[Row]:
    # Official WSC nests the spans under "target"; the Hub has them as top-level columns.
    return [{**record, **record["target"]}]


@dataclass(frozen=True)
class _Format:
    """Where and how one task's data is stored, locally and on the Hub."""

    folder: str                     # official folder spelling, for messages
    train_file: str
    validation_file: str
    hub_path: str
    hub_config: str
    hub_validation: str = "validation"
    encode: Callable[[Row, TaskSpec], tuple[tuple[str, ...], str | None]] = _fields
    tsv_columns: Mapping[str, str] = field(default_factory=dict)  # header name -> Hub column (GLUE)
    tsv_header: tuple[str, ...] | None = None  # column names of a headerless .tsv (CoLA)
    skip_malformed: bool = False               # only where upstream is known to hold broken rows
    reshape: Callable[[Row], list[Row]] | None = None  # official .jsonl record -> Hub rows
    derived: bool = False                      # a derived 9k/1k subset may stand in for missing files


def _glue(folder: str, config: str, columns: Mapping[str, str], **kwargs: Any) -> _Format:
    validation = "dev_matched.tsv" if config == "mnli" else "dev.tsv"
    return _Format(folder, "train.tsv", validation, "nyu-mll/glue", config, tsv_columns=columns, **kwargs)


def _superglue(folder: str, config: str, **kwargs: Any) -> _Format:
    return _Format(folder, "train.jsonl", "val.jsonl", "aps/super_glue", config, **kwargs)


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}

_FORMATS: dict[str, _Format] = {
    "glue/cola": _glue(
        "CoLA", "cola", {"sentence": "sentence", "label": "label"},
        tsv_header=("source", "label", "original_mark", "sentence"),
    ),
    "glue/sst2": _glue("SST-2", "sst2", {"sentence": "sentence", "label": "label"}),
    "glue/mrpc": _glue("MRPC", "mrpc", {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
    "glue/qqp": _glue(
        "QQP", "qqp", {"question1": "question1", "question2": "question2", "is_duplicate": "label"},
        skip_malformed=True, derived=True,
    ),
    "glue/stsb": _glue("STS-B", "stsb", {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"}),
    "glue/mnli": _glue(
        "MNLI", "mnli", {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
        hub_validation="validation_matched", derived=True,
    ),
    "glue/qnli": _glue("QNLI", "qnli", {"question": "question", "sentence": "sentence", "label": "label"}, derived=True),
    "glue/rte": _glue("RTE", "rte", _PAIR),
    "glue/wnli": _glue("WNLI", "wnli", _PAIR),
    "superglue/boolq": _superglue("BoolQ", "boolq"),
    "superglue/cb": _superglue("CB", "cb"),
    "superglue/copa": _superglue("COPA", "copa", encode=_copa),
    "superglue/multirc": _superglue("MultiRC", "multirc", encode=_multirc, reshape=_multirc_options),
    "superglue/wic": _superglue("WiC", "wic", encode=_wic),
    "superglue/wsc": _superglue("WSC", "wsc.fixed", encode=_wsc, reshape=_wsc_flat),
    "superglue/rte": _superglue("RTE", "rte"),
}

_BENCHMARK_FOLDERS = {"glue": {"glue", "gluedata"}, "superglue": {"superglue", "supergluedata"}}
_DERIVED_FOLDERS = (("derived", "powerfulpromptftgluepretrain"), ("gluepretrain",))
_DERIVED_FILES = {"train": "train.json", "validation": "dev.json"}


# --------------------------------------------------------------------------- conversion (shared by all sources)


def _to_example(task: TaskSpec, fmt: _Format, where: str, row: Row) -> Example:
    try:
        not_text = [name for name in task.input_fields if not isinstance(row[name], str)]
        if not_text:
            raise DataError(f"{where}: {task.name} field {not_text[0]!r} is {shown(row[not_text[0]])}, not a string")
        texts, group = fmt.encode(row, task)
        label = parse_label(task, row["label"], where)
    except KeyError as exc:
        needed = ", ".join((*task.input_fields, "label"))
        raise DataError(f"{where}: missing field {exc.args[0]!r} (a {task.name} row needs {needed})") from None
    return Example(texts, label, group)


def _convert(task: TaskSpec, fmt: _Format, rows: Iterable[Located]) -> list[Example]:
    return [_to_example(task, fmt, where, row) for where, row in rows]


def _require_examples(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataError(f"{path}: holds no examples; expected the official file with at least one row")
    return examples


def convert_hub_dataset(task: TaskSpec, dataset: Any, origin: str) -> list[Example]:
    """Examples from one split of `task` as a Hub `datasets.Dataset`; `origin` names it in error messages."""
    return _convert(task, _format(task), ((f"{origin} row {i}", row) for i, row in enumerate(_hub_rows(dataset))))


def _hub_rows(dataset: Any) -> Iterable[Row]:
    # Batched reads are several times faster than indexing the Arrow table row by row (QQP has 364k rows).
    for batch in dataset.iter(batch_size=4096):
        columns = list(batch)
        yield from (dict(zip(columns, values)) for values in zip(*batch.values()))


def _format(task: TaskSpec) -> _Format:
    fmt = _FORMATS.get(task.name)
    if fmt is None:
        raise NotFoundError(f"no data loader for task {task.name!r}; run `transferkit tasks` to list the available tasks")
    return fmt


# --------------------------------------------------------------------------- local readers


def _read_tsv(path: Path, fmt: _Format) -> tuple[list[Located], int]:
    """Rows of an official GLUE .tsv in Hub layout, and how many known-malformed rows were skipped."""
    skipped = [0]
    text = read_text(path, "expected an official GLUE .tsv")
    rows = [
        (where, {hub: values[column] for column, hub in fmt.tsv_columns.items()})
        for where, values in delimited_rows(text, path, "tsv", fmt.tsv_header, tuple(fmt.tsv_columns), official="GLUE",
                                            skipped=skipped if fmt.skip_malformed else None)
    ]
    return rows, skipped[0]


def _read_jsonl(path: Path, fmt: _Format) -> list[Located]:
    rows: list[Located] = []
    for where, record in jsonl_rows(read_text(path, "expected official SuperGLUE .jsonl"), path, "one SuperGLUE record per line"):
        try:
            rows.extend((where, row) for row in (fmt.reshape(record) if fmt.reshape else [record]))
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: record is not in the official SuperGLUE layout (problem at {shown(exc)})") from None
    return rows


def _read_derived(path: Path, task: TaskSpec) -> list[Located]:
    """Rows of a PowerfulPromptFT ``{"0": {"text_a", "text_b", "label"}, ...}`` file, in key order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or not all(ASCII_INDEX.fullmatch(key) for key in data):
        raise DataError(f'{path}: expected a JSON object keyed by "0", "1", ... (the PowerfulPromptFT layout)')
    first, second = task.input_fields
    rows: list[Located] = []
    for key in sorted(data, key=int):
        record = data[key]
        where = f"{path} record {key}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with text_a, text_b and label")
        rows.append((where, {first: record.get("text_a"), second: record.get("text_b"), "label": record.get("label")}))
    return rows


# --------------------------------------------------------------------------- finding files


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _children(folder: Path, names: set[str], want_dir: bool) -> list[Path]:
    """Entries of `folder` whose normalized name is in `names` (sorted, so the choice is stable)."""
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None
    return [p for p in entries if _norm(p.name) in names and (p.is_dir() if want_dir else p.is_file())]


def _file(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, matched case-insensitively."""
    for path in sorted(folder.iterdir()):
        if path.name.lower() == name.lower() and path.is_file():
            return path
    return None


def _official_files(task: TaskSpec, fmt: _Format, data_dir: Path) -> tuple[dict[str, Path | None], list[Path]]:
    """({"train": path, "validation": path} from the first task folder holding either, folders looked at)."""
    roots = _children(data_dir, _BENCHMARK_FOLDERS[task.benchmark], want_dir=True) + [data_dir]
    folders = [folder for root in roots for folder in _children(root, {task.short_name}, want_dir=True)]
    for folder in folders:
        found = {"train": _file(folder, fmt.train_file), "validation": _file(folder, fmt.validation_file)}
        if any(found.values()):
            return found, [folder]
    # Nothing found: name the official layouts in the error, plus any look-alike folders without the files.
    expected = [data_dir / task.benchmark / fmt.folder, data_dir / fmt.folder]
    return {"train": None, "validation": None}, list(dict.fromkeys(folders + expected))


def _derived_folder(task: TaskSpec, data_dir: Path) -> Path | None:
    for chain in _DERIVED_FOLDERS:
        level = [data_dir]
        for name in chain:
            level = [child for folder in level for child in _children(folder, {name}, want_dir=True)]
        for folder in level:
            found = _children(folder, {task.short_name}, want_dir=True)
            if found:
                return found[0]
    return None


# --------------------------------------------------------------------------- sources


@dataclass
class _Loaded:
    train: list[Example]
    validation: list[Example]
    provenance: dict


def _load_local(task: TaskSpec, fmt: _Format, data_dir: Path) -> _Loaded:
    if not data_dir.is_dir():
        raise DataError(f"data dir {str(data_dir)!r} is not a folder; pass --data-dir pointing at your GLUE/SuperGLUE files")
    official, folders = _official_files(task, fmt, data_dir)
    derived_dir = _derived_folder(task, data_dir) if fmt.derived and None in official.values() else None

    loaded: dict[str, list[Example]] = {}
    files: dict[str, str] = {}
    origin: dict[str, str] = {}
    skipped: dict[str, int] = {}
    for split, path in official.items():
        if path is not None:
            if path.suffix.lower() == ".tsv":
                rows, skipped[split] = _read_tsv(path, fmt)
            else:
                rows = _read_jsonl(path, fmt)
            origin[split] = "official"
        elif derived_dir is not None and _file(derived_dir, _DERIVED_FILES[split]) is not None:
            path = _file(derived_dir, _DERIVED_FILES[split])
            rows = _read_derived(path, task)
            origin[split] = "derived"
        else:
            wanted = fmt.train_file if split == "train" else fmt.validation_file
            tried = [str(folder / wanted) for folder in folders]
            if fmt.derived:
                tried.append(str(data_dir / "derived" / "powerfulpromptft_glue_pretrain" / fmt.folder / _DERIVED_FILES[split]))
            raise DataError(f"{task.name}: no {split} file found (tried {', '.join(tried)}); {_FIX_IT}")
        loaded[split] = _require_examples(_convert(task, fmt, rows), path)
        files[split] = str(path)

    provenance: dict = {"source": "local", "files": files}
    if fmt.hub_validation != "validation" and origin["validation"] == "official":
        provenance["validation_split"] = fmt.validation_file.removesuffix(".tsv")
    if any(skipped.values()):
        provenance["skipped_malformed_rows"] = {split: n for split, n in skipped.items() if n}
    train = loaded["train"]
    if "derived" in origin.values():
        provenance["source"] = "derived-subset"
        if origin["train"] == origin["validation"]:
            provenance["note"] = (
                f"official {fmt.folder} files are absent: train and dev come from the PowerfulPromptFT 9k train.json "
                "subset, test is its 1k dev.json subset (not the official validation set)"
            )
        else:
            # The two sources were sampled independently, so make sure no test example leaks into train.
            test_texts = {e.texts for e in loaded["validation"]}
            train = [e for e in train if e.texts not in test_texts]
            dropped = len(loaded["train"]) - len(train)
            provenance["overlap_dropped_from_train"] = dropped
            derived_split = "train" if origin["train"] == "derived" else "validation"
            provenance["note"] = (
                f"official {fmt.folder} {derived_split} file is absent: that split comes from the PowerfulPromptFT "
                f"9k/1k subset, the other from the official file; overlap check: {dropped} train examples share "
                "their texts with a test example" + (" and were dropped" if dropped else "")
            )
    return _Loaded(train, loaded["validation"], provenance)


def _load_hub(task: TaskSpec, fmt: _Format) -> _Loaded:
    import datasets  # deferred: slow to import and only needed without --data-dir
    from datasets.exceptions import DatasetsError

    splits: dict[str, list[Example]] = {}
    files: dict[str, str] = {}
    for role, split in (("train", "train"), ("validation", fmt.hub_validation)):
        origin = f"{fmt.hub_path}/{fmt.hub_config}/{split}"
        try:
            dataset = datasets.load_dataset(fmt.hub_path, fmt.hub_config, split=split)
        except (OSError, ValueError, DatasetsError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{task.name}: could not load {origin} from the Hugging Face Hub ({reason}); the Hub may be "
                "unreachable - pass --data-dir (or set TRANSFERKIT_DATA_DIR) pointing at official GLUE/SuperGLUE files"
            ) from None
        splits[role] = convert_hub_dataset(task, dataset, origin)
        files[role] = origin
    provenance: dict = {"source": "hub", "files": files}
    if fmt.hub_validation != "validation":
        provenance["validation_split"] = fmt.hub_validation
    return _Loaded(splits["train"], splits["validation"], provenance)


def load_splits(task: TaskSpec, data_dir: Path | None, seed: int, *, max_train_examples: int | None = None) -> TaskSplits:
    """Train/dev/test splits of `task`: a catalog task from local official files (`data_dir`) or the Hub
    (`data_dir` None), a custom task from its registered files (`transferkit.tasks.custom`)."""
    if max_train_examples is not None and max_train_examples < 1:
        raise InvalidInputError(f"max_train_examples must be a positive integer, got {max_train_examples}")
    if isinstance(task, CustomTask):
        train, dev, test, protocol = load_custom_splits(task, None if data_dir is None else Path(data_dir), seed)
    else:
        fmt = _format(task)
        loaded = _load_hub(task, fmt) if data_dir is None else _load_local(task, fmt, Path(data_dir))
        train = loaded.train
        if task.size == "small":
            dev, test, protocol = split_small(task, loaded.validation, seed)
        else:
            train, dev, protocol = split_large(task, train, seed)
            test = loaded.validation
        protocol = {**protocol, **loaded.provenance}
    protocol = {**protocol, "seed": seed}
    if max_train_examples is not None:
        protocol["max_train_examples"] = max_train_examples
        protocol["train_examples_before_subsample"] = len(train)
        train = subsample_train(task, train, max_train_examples, seed)
    return TaskSplits(task, train, dev, test, protocol)
