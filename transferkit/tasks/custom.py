"""Custom tasks: a task defined by a TOML spec over the user's own CSV, TSV, JSONL, Parquet or text files.

A spec (all keys but `name`, `description`, `text_fields`, the labels and `files` are optional)::

    name = "senteval/mr"          # "<namespace>/<name>", or a bare name stored as "custom/<name>"
    description = "Given a sentence from a movie review, ..."   # one sentence: task prompt + source ranking
    text_fields = ["sentence"]    # 1 column, or 2 for a pair (premise, hypothesis)
    label_field = "label"         # the label column (default "label"); unused where a file sets `label`
    label_names = ["negative", "positive"]   # classes in label-index order ...
    # regression = true           # ... or a float target
    metrics = ["accuracy"]        # primary first; default accuracy (classes) or pearson, spearman (regression)

    [split]                       # how dev/test are made where no file provides them
    dev_fraction = 0.1            # default 0.1
    test_fraction = 0.1           # default 0.1
    seed = 0                      # fixes the held-out examples; default: the run's --seed

    [[files]]
    path = "senteval/MR/rt-polarity.pos"
    format = "lines"              # csv | tsv | jsonl | parquet | lines; default from the suffix
    label = "positive"            # every row of this file has this label (one file per class)
    split = "train"               # train | dev | test; leave out everywhere to split one pool
    columns = ["sentence", "label"]   # csv/tsv without a header line: its column names

Names: lower-case letters, digits, ".", "-" and "_"; the namespaces glue and
superglue are reserved and a name may not reuse a catalog task's short name, so
bare names of built-in tasks keep resolving as before.

Files: a relative `path` is looked up next to the spec file first, then in the
data dir (``--data-dir`` / ``TRANSFERKIT_DATA_DIR``); which one matched is
recorded (``base``). A data-dir file is found again under whatever data dir the
user training on the task passes, so one registry serves users whose copies
live in different places; the others are read from the absolute path recorded.
Every file's sha256 and row count are recorded when the task is added and the
sha256 is checked whenever it is read, so a task always means the same examples.

Formats: UTF-8 text (a BOM is allowed). csv: comma-separated with standard
quoting; tsv: tab-separated without quoting (tabs and newlines cannot occur in
fields, as in GLUE); both need a header line unless `columns` names the
columns. jsonl: one JSON object per line. parquet: read with pyarrow. lines:
one example per line (blank lines skipped, surrounding whitespace stripped),
for single-text tasks with a per-file `label`. Blank lines are skipped in csv,
tsv and jsonl too. Labels follow `transferkit.tasks.labels`; text fields must
be non-empty strings.

Splits: when no file has a `split`, all rows form one pool and dev_fraction and
test_fraction of it are held out (seeded, `transferkit.tasks.splits.hold_out`).
Otherwise every file needs a `split`, train is required, and a split without
files is held out from train by its fraction.

Every problem is reported with where it is: ``<spec>: <field>: ...`` for the
spec and ``<file>:<line>: ...`` (Parquet: ``<file> row <n>``, 1-based) for data.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from transferkit.errors import DataError, InvalidInputError
from transferkit.tasks.catalog import CATALOG, TaskSpec, normalize_name
from transferkit.tasks.labels import parse_label
from transferkit.tasks.readers import decode, delimited_rows, jsonl_rows, lines_rows, parquet_rows, read_bytes
from transferkit.tasks.splits import SPLIT_NAMES, Example, hold_out, hold_out_counts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = ("csv", "tsv", "jsonl", "parquet", "lines")
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "lines"}
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
DEFAULT_NAMESPACE = "custom"
DEFAULT_FRACTION = 0.1
_RESERVED_NAMESPACES = {normalize_name(spec.benchmark) for spec in CATALOG.values()}
_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TOP_KEYS = ("name", "description", "text_fields", "label_field", "label_names", "regression", "metrics", "split", "files")
_SPLIT_KEYS = ("dev_fraction", "test_fraction", "seed")
_FILE_KEYS = ("path", "format", "label", "split", "columns")


@dataclass(frozen=True)
class DataFile:
    """One data file of a custom task, as registered: where it is, how to read it, what it held."""

    path: str                       # as written in the spec
    base: str                       # "spec" (next to the spec file), "data_dir" or "absolute"
    location: str                   # absolute path where it was found when the task was added
    format: str
    split: str | None               # None: part of the pool the hold-out protocol splits
    label: str | int | float | None  # every row's label, when the file sets one
    columns: tuple[str, ...] | None  # header-less csv/tsv
    sha256: str
    rows: int

    def find(self, data_dir: Path | None, task_name: str) -> Path:
        """Where the file is now: under the current data dir for data-dir files, else where it was registered."""
        if self.base != "data_dir":
            return Path(self.location)
        if data_dir is None:
            raise DataError(
                f"{task_name} reads {self.path} relative to the data dir; pass --data-dir (or set TRANSFERKIT_DATA_DIR) "
                "pointing at the folder that holds it"
            )
        return Path(data_dir) / self.path


@dataclass(frozen=True)
class HoldOut:
    """Fractions held out as dev/test where no file provides them, and an optional fixed seed."""

    dev_fraction: float | None
    test_fraction: float | None
    seed: int | None

    def fractions(self) -> dict[str, float]:
        """{split: fraction} of the splits that are held out."""
        return {s: f for s, f in (("dev", self.dev_fraction), ("test", self.test_fraction)) if f is not None}


@dataclass(frozen=True)
class CustomTask(TaskSpec):
    """A task registered from a user's spec file; everything needed to read its data again."""

    label_field: str | None
    files: tuple[DataFile, ...]
    holdout: HoldOut
    spec_file: str

    kind = "custom"

    @classmethod
    def from_dict(cls, data: dict) -> CustomTask:
        """Rebuild from `to_dict()` (the registry's stored spec)."""
        files = tuple(
            DataFile(**{**f, "columns": tuple(f["columns"]) if f["columns"] is not None else None}) for f in data["files"]
        )
        return cls(
            name=data["name"], benchmark=data["benchmark"], short_name=data["short_name"], description=data["description"],
            input_fields=tuple(data["input_fields"]),
            label_names=tuple(data["label_names"]) if data["label_names"] is not None else None,
            metrics=tuple(data["metrics"]), size=data["size"], label_field=data["label_field"], files=files,
            holdout=HoldOut(**data["holdout"]), spec_file=data["spec_file"],
        )

    def definition(self) -> dict:
        """What the task means (no file locations or spec path): equal definitions read equal examples."""
        data = self.to_dict()
        data.pop("spec_file")
        data["files"] = [{k: v for k, v in f.items() if k != "location"} for f in data["files"]]
        return data


# --------------------------------------------------------------------------- reading the spec


class _Spec:
    """The parsed TOML with errors that name the spec file and the field."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = path, data

    def error(self, field: str, message: str) -> InvalidInputError:
        return InvalidInputError(f"{self.path}: {field}: {message}")

    def check_keys(self, table: dict, allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; known fields: {', '.join(allowed)}"
                raise self.error(prefix + key, f"unknown field{hint}")

    def text(self, table: dict, key: str, field: str, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, "missing" if value is None else f"must be a non-empty string, got {value!r}")
        return value.strip()

    def names(self, table: dict, key: str, field: str, low: int, high: int | None) -> tuple[str, ...] | None:
        value = table.get(key)
        if value is None:
            return None
        count = f"{low} to {high}" if high is not None else f"at least {low}"
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.error(field, f"must be a list of {count} non-empty strings, got {value!r}")
        names = tuple(v.strip() for v in value)
        if not low <= len(names) <= (high if high is not None else len(names)):
            raise self.error(field, f"must list {count} names, got {len(names)}")
        folded = [n.lower() for n in names]
        if len(set(folded)) != len(folded):
            duplicate = next(n for n in names if folded.count(n.lower()) > 1)
            raise self.error(field, f"{duplicate!r} is listed twice")
        return names


def _load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InvalidInputError(f"task spec {str(path)!r} does not exist; pass the path of a .toml task spec") from None
    except IsADirectoryError:
        raise InvalidInputError(f"task spec {str(path)!r} is a folder; pass the path of a .toml task spec") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"task spec {str(path)!r} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML ({exc})") from None


def _task_name(spec: _Spec) -> tuple[str, str, str]:
    """(canonical name, namespace, short name)."""
    raw = spec.text(spec.data, "name", "name").lower()
    namespace, _, short = raw.rpartition("/")
    namespace = namespace or DEFAULT_NAMESPACE
    if "/" in namespace or not _NAME_PART.match(namespace) or not _NAME_PART.match(short):
        raise spec.error("name", f"{raw!r} must be NAME or NAMESPACE/NAME of lower-case letters, digits, '.', '-' and '_'")
    if normalize_name(namespace) in _RESERVED_NAMESPACES:
        raise spec.error("name", f"the namespace {namespace!r} is reserved for the built-in catalog; use another one")
    clash = [t.name for t in CATALOG.values() if normalize_name(t.short_name) == normalize_name(short)]
    if clash:
        raise spec.error("name", f"{short!r} is the short name of the catalog task {clash[0]}; choose another name")
    return f"{namespace}/{short}", namespace, short


def _labels(spec: _Spec) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(label names or None for regression, metrics)."""
    data = spec.data
    regression = data.get("regression", False)
    if not isinstance(regression, bool):
        raise spec.error("regression", f"must be true or false, got {regression!r}")
    label_names = spec.names(data, "label_names", "label_names", 2, None)
    if regression and label_names is not None:
        raise spec.error("label_names", "a regression task has no label names; drop label_names or regression")
    if not regression and label_names is None:
        raise spec.error("label_names", "missing: list the class names in label-index order, or set regression = true")
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    metrics = spec.names(data, "metrics", "metrics", 1, None) or ((allowed[0], allowed[1]) if regression else ("accuracy",))
    for metric in metrics:
        if metric not in allowed:
            kind = "regression" if regression else "classification"
            raise spec.error("metrics", f"{metric!r} is not a {kind} metric; choose from {', '.join(allowed)}")
    if "f1" in metrics and label_names is not None and len(label_names) != 2:
        raise spec.error("metrics", f"f1 is binary (of label {label_names[1]!r}); with {len(label_names)} classes use macro_f1")
    return label_names, metrics


def _holdout(spec: _Spec, split_files: set[str | None]) -> HoldOut:
    table = spec.data.get("split", {})
    if not isinstance(table, dict):
        raise spec.error("split", "must be a table ([split]) with dev_fraction, test_fraction and seed")
    spec.check_keys(table, _SPLIT_KEYS, "split.")
    seed = table.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise spec.error("split.seed", f"must be an integer, got {seed!r}")
    pooled = split_files == {None}
    fractions: dict[str, float | None] = {}
    for split in ("dev", "test"):
        key = f"{split}_fraction"
        value = table.get(key)
        held = pooled or split not in split_files
        if value is not None and not held:
            raise spec.error(f"split.{key}", f"{split} comes from the files with split = {split!r}; drop {key}")
        if value is None:
            value = DEFAULT_FRACTION if held else None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise spec.error(f"split.{key}", f"must be a number between 0 and 1 (exclusive), got {value!r}")
        fractions[split] = float(value) if value is not None else None
    if sum(f for f in fractions.values() if f) >= 1:
        raise spec.error("split", "dev_fraction + test_fraction must leave some examples for training")
    return HoldOut(fractions["dev"], fractions["test"], seed)


@dataclass(frozen=True)
class _FileEntry:
    index: int
    path: str
    format: str
    split: str | None
    label: Any
    columns: tuple[str, ...] | None

    @property
    def field(self) -> str:
        return f"files[{self.index}]"


def _file_entries(spec: _Spec, text_fields: tuple[str, ...]) -> list[_FileEntry]:
    files = spec.data.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        raise spec.error("files", "missing: add one [[files]] table per data file, each with a path")
    entries = []
    for index, table in enumerate(files):
        field = f"files[{index}]"
        spec.check_keys(table, _FILE_KEYS, field + ".")
        path = spec.text(table, "path", f"{field}.path")
        fmt = spec.text(table, "format", f"{field}.format", required=False)
        if fmt is None:
            fmt = _SUFFIX_FORMATS.get(Path(path).suffix.lower())
            if fmt is None:
                raise spec.error(f"{field}.format", f"cannot tell the format of {path!r} from its suffix; set format = one of {', '.join(FORMATS)}")
        elif fmt.lower() not in FORMATS:
            raise spec.error(f"{field}.format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
        fmt = fmt.lower()
        split = spec.text(table, "split", f"{field}.split", required=False)
        if split is not None and split not in SPLIT_NAMES:
            raise spec.error(f"{field}.split", f"{split!r} is not one of {', '.join(SPLIT_NAMES)}")
        label = table.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int, float))):
            raise spec.error(f"{field}.label", f"must be a label name or number, got {label!r}")
        columns = spec.names(table, "columns", f"{field}.columns", 1, None)
        if columns is not None and fmt not in ("csv", "tsv"):
            raise spec.error(f"{field}.columns", f"only csv and tsv files take column names, not {fmt}")
        if fmt == "lines":
            if len(text_fields) != 1:
                raise spec.error(f"{field}.format", "a lines file holds one text per line, but text_fields names two")
            if label is None:
                raise spec.error(f"{field}.label", "a lines file has no label column; set the label of its rows")
        entries.append(_FileEntry(index, path, fmt, split, label, columns))
    splits = {e.split for e in entries}
    if None in splits and len(splits) > 1:
        unassigned = next(e for e in entries if e.split is None)
        raise spec.error(f"{unassigned.field}.split", "either every file has a split (train, dev, test) or none has")
    if splits != {None} and "train" not in splits:
        raise spec.error("files", "no file has split = \"train\"; a task needs training data")
    return entries


def _locate(spec: _Spec, entry: _FileEntry, data_dir: Path | None) -> tuple[str, Path]:
    """(base, absolute path) of a spec's file: absolute, next to the spec, or in the data dir."""
    path = Path(entry.path).expanduser()
    if path.is_absolute():
        candidates = [("absolute", path)]
    else:
        candidates = [("spec", spec.path.resolve().parent / path)]
        if data_dir is not None:
            candidates.append(("data_dir", Path(data_dir).resolve() / path))
    for base, candidate in candidates:
        if candidate.is_file():
            return base, candidate.resolve()
    looked = " and ".join(str(c.parent) for _, c in candidates)
    hint = "" if data_dir is not None or path.is_absolute() else " (no --data-dir given)"
    raise spec.error(
        f"{entry.field}.path",
        f"{entry.path!r} not found in {looked}{hint}; relative paths are read next to the spec file or in the data dir",
    )


def read_task_file(spec_path: Path, data_dir: Path | None) -> CustomTask:
    """Parse and check a spec and every row of its files; nothing is written anywhere."""
    spec = _Spec(Path(spec_path), _load_toml(Path(spec_path)))
    spec.check_keys(spec.data, _TOP_KEYS, "")
    name, namespace, short = _task_name(spec)
    description = " ".join(spec.text(spec.data, "description", "description").split())
    text_fields = spec.names(spec.data, "text_fields", "text_fields", 1, 2)
    if text_fields is None:
        raise spec.error("text_fields", "missing: list the 1 or 2 columns holding the input text")
    label_names, metrics = _labels(spec)
    entries = _file_entries(spec, text_fields)
    label_field = spec.text(spec.data, "label_field", "label_field", required=False)
    if label_field is None and any(e.label is None for e in entries):
        label_field = "label"
    if label_field in text_fields:
        raise spec.error("label_field", f"{label_field!r} is also a text field")
    holdout = _holdout(spec, {e.split for e in entries})
    task = CustomTask(
        name, namespace, short, description, text_fields, label_names, metrics, "custom",
        label_field, (), holdout, str(spec.path.resolve()),
    )
    files = []
    for entry in entries:
        if entry.label is not None:
            try:
                parse_label(task, entry.label, f"{spec.path}: {entry.field}.label")
            except DataError as error:  # a bad constant label is a mistake in the spec, not in the data
                raise InvalidInputError(str(error)) from None
        base, location = _locate(spec, entry, data_dir)
        data = read_bytes(location)
        stub = DataFile(entry.path, base, str(location), entry.format, entry.split, entry.label, entry.columns, "", 0)
        examples = file_examples(task, stub, location, data)
        if not examples:
            raise DataError(f"{location}: holds no examples")
        files.append(replace(stub, sha256=hashlib.sha256(data).hexdigest(), rows=len(examples)))
    task = replace(task, files=tuple(files))
    _check_split_sizes(task)
    return task


def _check_split_sizes(task: CustomTask) -> None:
    """Refuse a hold-out that cannot be made, now rather than at the first training run."""
    rows: dict[str | None, int] = {}
    for file in task.files:
        rows[file.split] = rows.get(file.split, 0) + file.rows
    hold_out_counts(task, rows.get("train", rows.get(None, 0)), task.holdout.fractions())


# --------------------------------------------------------------------------- reading data files


def _rows(task: CustomTask, file: DataFile, path: Path, data: bytes) -> Iterator[tuple[str, dict]]:
    needed = list(task.input_fields) + ([task.label_field] if file.label is None and task.label_field else [])
    if file.format == "parquet":
        return parquet_rows(data, path, needed)
    text = decode(data, path)
    if file.format == "jsonl":
        return jsonl_rows(text, path)
    if file.format == "lines":
        return lines_rows(text, path, task.input_fields[0])
    return delimited_rows(text, path, file.format, file.columns, needed)


def table_rows(path: Path, needed: list[str]) -> Iterator[tuple[str, dict]]:
    """The rows of a user's csv, tsv, jsonl or parquet file (format from its suffix), each with where it is.

    csv/tsv need a header line; those and parquet must have the `needed` columns (a jsonl row is checked by the caller).
    """
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl", "parquet"):
        raise InvalidInputError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    data = read_bytes(path)
    if fmt == "parquet":
        return parquet_rows(data, path, needed)
    text = decode(data, path)
    return jsonl_rows(text, path) if fmt == "jsonl" else delimited_rows(text, path, fmt, None, needed)


def file_examples(task: CustomTask, file: DataFile, path: Path, data: bytes) -> list[Example]:
    """The examples of one file's bytes, every row checked (errors name the file and line or row)."""
    examples = []
    for where, row in _rows(task, file, path, data):
        texts = []
        for field in task.input_fields:
            if field not in row:
                raise DataError(f"{where}: no field {field!r} (a {task.name} row needs {', '.join(task.input_fields)})")
            value = row[field]
            if not isinstance(value, str) or not value.strip():
                problem = "is empty" if isinstance(value, str) or value is None else f"is {value!r}, not text"
                raise DataError(f"{where}: field {field!r} {problem}")
            texts.append(value)
        if file.label is not None:
            raw = file.label
        elif task.label_field in row:
            raw = row[task.label_field]
        else:
            raise DataError(f"{where}: no field {task.label_field!r} holding the label")
        examples.append(Example(tuple(texts), parse_label(task, raw, where)))
    return examples


def load_custom_splits(task: CustomTask, data_dir: Path | None, seed: int) -> tuple[list[Example], list[Example], list[Example], dict]:
    """(train, dev, test, protocol) of a registered custom task, each file checked against its recorded sha256."""
    by_split: dict[str | None, list[Example]] = {}
    files = []
    for file in task.files:
        path = file.find(data_dir, task.name)
        if not path.is_file():
            raise DataError(f"{task.name}: data file {path} not found (registered from {file.location})")
        data = read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != file.sha256:
            raise DataError(
                f"{path} changed since {task.name} was registered (sha256 {digest[:12]}…, recorded {file.sha256[:12]}…); "
                "restore the registered file or add the new data as a task of another name"
            )
        by_split.setdefault(file.split, []).extend(file_examples(task, file, path, data))
        files.append({"path": file.path, "base": file.base, "read_from": str(path), "split": file.split, "sha256": digest})
    split_seed = task.holdout.seed if task.holdout.seed is not None else seed
    fractions = task.holdout.fractions()
    source = by_split.get("train", by_split.get(None, []))
    if fractions:
        train, held, info = hold_out(task, source, fractions, split_seed)
        info["split_seed"] = split_seed
    else:
        train, held, info = source, {}, {"name": "custom: train, dev and test from their own files"}
    dev, test = by_split.get("dev", held.get("dev")), by_split.get("test", held.get("test"))
    protocol = {**info, "source": "custom", "files": files}
    return train, dev, test, protocol
