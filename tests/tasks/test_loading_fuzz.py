"""Property-based tests: hostile GLUE .tsv and SuperGLUE .jsonl files load exactly or fail with one clear line.

Each generated data folder is either clean (with harmless variations: shuffled and extra columns,
a BOM, CRLF line ends, blank lines, any Unicode text, huge JSON lines) or carries exactly one
fault (wrong field count, label outside the label set, missing column or field, non-text field,
non-UTF-8 bytes, invalid JSON, an empty file, a .tsv field past the csv limit). A clean folder
must load to exactly the generated examples; a faulty one must raise one `DataError` line naming
the file. Nothing in between: no traceback, no silently dropped or altered example.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transferkit.errors import DataError
from transferkit.tasks import CATALOG, load_splits

RTE, CB, QQP = CATALOG["glue/rte"], CATALOG["superglue/cb"], CATALOG["glue/qqp"]
CSV_FIELD_LIMIT = 131_072
EXAMPLES = 150  # per property; a few seconds each
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What a .tsv field can hold (no tab or line break: the format has no escaping) and what JSON can hold.
TSV_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\t\n\r"), max_size=25)
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=25)
TSV_FAULTS = ("truncated-row", "extra-field", "bad-label", "missing-column", "not-utf8", "huge-field", "no-rows")
JSONL_FAULTS = ("bad-label", "missing-field", "not-text", "not-object", "invalid-json", "not-utf8", "no-rows")


def _label_index(task, value) -> int | None:
    """The oracle: what a label value means (None: outside the label set)."""
    if isinstance(value, bool):
        return int(value) if task.num_labels == 2 else None
    if isinstance(value, int):
        return value if 0 <= value < task.num_labels else None
    if isinstance(value, str):
        text = value.strip()
        names = [name.lower() for name in task.label_names]
        if text.lower() in names:
            return names.index(text.lower())
        if re.fullmatch(r"[0-9]+", text) and int(text) < task.num_labels:
            return int(text)
    return None


def _good_label(task, as_json: bool):
    names = st.sampled_from(task.label_names).flatmap(
        lambda name: st.tuples(st.sampled_from([name, name.upper(), name.title()]), st.sampled_from(["", " ", "  "]))
    ).map(lambda case_pad: f"{case_pad[1]}{case_pad[0]}{case_pad[1]}")
    indices = st.integers(0, task.num_labels - 1)
    return st.one_of(names, indices.map(str), indices) if as_json else st.one_of(names, indices.map(str))


def _bad_label(task, as_json: bool):
    strings = ANY_TEXT if as_json else TSV_TEXT
    values = st.one_of(strings, st.integers(), st.booleans(), st.floats(), st.none(), st.lists(st.integers(), max_size=2)) if as_json else strings
    return values.filter(lambda value: _label_index(task, value) is None)


def _check_failure(error: Exception, path: Path) -> None:
    message = str(error)
    assert isinstance(error, DataError), f"{type(error).__name__}: {message}"
    assert "\n" not in message and len(message) < 600 + len(str(path)), message
    assert str(path) in message, message


@st.composite
def tsv_folder(draw):
    """(files {name: bytes}, expected examples per file or None, the faulty file or None)."""
    fault = draw(st.sampled_from((None,) * 6 + TSV_FAULTS))
    faulty = draw(st.sampled_from(["train.tsv", "dev.tsv"]))
    header = ["index", "sentence1", "sentence2", "label"] + (["extra"] if draw(st.booleans()) else [])
    header = draw(st.permutations(header))
    files, expected = {}, {}
    for name in ("train.tsv", "dev.tsv"):
        here = fault if name == faulty else None
        count = 0 if here == "no-rows" else draw(st.integers(2, 8))
        bad_row = draw(st.integers(0, count - 1)) if count else None
        lines, examples = ["\t".join(header)], []
        if here == "missing-column":
            dropped = draw(st.sampled_from(["sentence1", "sentence2", "label"]))
            lines[0] = "\t".join(column for column in header if column != dropped)
        for row in range(count):
            fields = {"index": str(row), "sentence1": draw(TSV_TEXT), "sentence2": draw(TSV_TEXT), "extra": draw(TSV_TEXT)}
            if here == "bad-label" and row == bad_row:
                fields["label"] = draw(_bad_label(RTE, as_json=False))
            else:
                fields["label"] = draw(_good_label(RTE, as_json=False))
            if here == "huge-field" and row == bad_row:
                fields["sentence1"] = "x" * (CSV_FIELD_LIMIT + 1)
            values = [fields[column] for column in header]
            if row == bad_row and here == "truncated-row":
                values = values[: draw(st.integers(1, len(values) - 1))]
                values = values if "\t".join(values) else ["?"]  # an empty line is a blank line, not a row
            if row == bad_row and here == "extra-field":
                values = values + [draw(TSV_TEXT)]
            lines.append("\t".join(values))
            examples.append(((fields["sentence1"], fields["sentence2"]), _label_index(RTE, fields["label"])))
            if draw(st.integers(0, 9)) == 0:
                lines.append("")  # a blank line is not a row
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        data = (newline.join(lines) + (newline if draw(st.booleans()) else "")).encode("utf-8")
        if draw(st.booleans()):
            data = b"\xef\xbb\xbf" + data  # MRPC's official files start with a BOM
        if here == "not-utf8":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + b"\xff" + data[at:]
        files[name], expected[name] = data, examples
    return files, expected, (faulty if fault else None)


def _check_load(task, folder: str, files: dict[str, bytes], expected: dict[str, list], faulty: str | None) -> None:
    """Write the files and load the task: exactly the expected examples when clean, one DataError line when faulty."""
    train_file, validation_file = files
    with tempfile.TemporaryDirectory() as root:
        task_dir = Path(root) / folder
        task_dir.mkdir(parents=True)
        for name, data in files.items():
            (task_dir / name).write_bytes(data)
        try:
            splits = load_splits(task, Path(root), seed=0)
        except Exception as error:  # noqa: BLE001 - the property inspects whatever was raised
            assert faulty is not None, f"clean files were refused: {error}"
            _check_failure(error, task_dir / faulty)
            return
    assert faulty is None, f"the fault in {faulty} was not reported"
    assert [(e.texts, e.label) for e in splits.train] == expected[train_file]  # in file order, none dropped
    assert Counter((e.texts, e.label) for e in splits.dev + splits.test) == Counter(expected[validation_file])


@FUZZ
@given(tsv_folder())
def test_glue_tsv_loads_exactly_or_fails_with_one_line(folder):
    _check_load(RTE, "glue/rte", *folder)


@st.composite
def jsonl_folder(draw):
    fault = draw(st.sampled_from((None,) * 6 + JSONL_FAULTS))
    faulty = draw(st.sampled_from(["train.jsonl", "val.jsonl"]))
    files, expected = {}, {}
    for name in ("train.jsonl", "val.jsonl"):
        here = fault if name == faulty else None
        count = 0 if here == "no-rows" else draw(st.integers(2, 8))
        bad_row = draw(st.integers(0, count - 1)) if count else None
        lines, examples = [], []
        for row in range(count):
            record = {"premise": draw(ANY_TEXT), "hypothesis": draw(ANY_TEXT), "idx": row}
            if draw(st.integers(0, 19)) == 0:
                record["premise"] = "long " * 40_000  # a 200 kB line is fine for JSON
            record["label"] = draw(_bad_label(CB, True) if here == "bad-label" and row == bad_row else _good_label(CB, True))
            examples.append(((record["premise"], record["hypothesis"]), _label_index(CB, record["label"])))
            if row == bad_row and here == "missing-field":
                del record[draw(st.sampled_from(["premise", "hypothesis", "label"]))]
            if row == bad_row and here == "not-text":
                record[draw(st.sampled_from(["premise", "hypothesis"]))] = draw(st.one_of(st.integers(), st.none(), st.lists(ANY_TEXT, max_size=2)))
            keys = draw(st.permutations(list(record)))
            line = json.dumps({key: record[key] for key in keys}, ensure_ascii=draw(st.booleans()))
            if row == bad_row and here == "not-object":
                line = json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), ANY_TEXT)))
            if row == bad_row and here == "invalid-json":
                line = line[: draw(st.integers(1, len(line) - 1))]  # "" would be a blank line, not a record
            lines.append(line)
            if draw(st.integers(0, 9)) == 0:
                lines.append("   ")  # whitespace-only lines are not records
        data = "\n".join(lines).encode("utf-8")
        if here == "not-utf8":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + b"\xff" + data[at:]
        files[name], expected[name] = data, examples
    return files, expected, (faulty if fault else None)


@FUZZ
@given(jsonl_folder())
def test_superglue_jsonl_loads_exactly_or_fails_with_one_line(folder):
    _check_load(CB, "superglue/cb", *folder)


QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1100), st.integers(1, 9).filter(lambda n: n != 6), TSV_TEXT.filter(bool)), max_size=12))
def test_qqp_skips_exactly_the_malformed_rows_and_counts_them(malformed):
    """QQP's official train.tsv holds known-broken rows: skipped, and counted in the protocol."""
    good = [f"{i}\t{2 * i}\t{2 * i + 1}\tfirst question {i}?\tsecond question {i}?\t{i % 2}" for i in range(1010)]
    lines = list(good)
    for position, fields, text in sorted(malformed, reverse=True):
        lines.insert(position, "\t".join([text] * fields))
    with tempfile.TemporaryDirectory() as root:
        task_dir = Path(root) / "glue" / "qqp"
        task_dir.mkdir(parents=True)
        (task_dir / "train.tsv").write_text("\n".join([QQP_HEADER, *lines]) + "\n", encoding="utf-8")
        (task_dir / "dev.tsv").write_text("\n".join([QQP_HEADER, *good[:5]]) + "\n", encoding="utf-8")
        splits = load_splits(QQP, Path(root), seed=0)
    skipped = splits.protocol.get("skipped_malformed_rows", {})
    assert skipped.get("train", 0) == len(malformed) and "validation" not in skipped
    assert sorted(e.texts for e in splits.train + splits.dev) == sorted((f"first question {i}?", f"second question {i}?") for i in range(1010))


@pytest.mark.parametrize("label", ["²", "١", "０", "1.0", "-0", "True"])
def test_non_ascii_or_non_integer_indices_are_not_labels(tmp_path, label):
    """Found by the properties above: `"²".isdigit()` is True but `int("²")` raises."""
    task_dir = tmp_path / "glue" / "rte"
    task_dir.mkdir(parents=True)
    rows = ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\t1", "1\tc\td\t0"]
    (task_dir / "train.tsv").write_text("\n".join(rows + [f"2\te\tf\t{label}"]), encoding="utf-8")
    (task_dir / "dev.tsv").write_text("\n".join(rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv:4: unknown glue/rte label"):
        load_splits(RTE, tmp_path, seed=0)


def test_derived_subset_keys_must_be_ascii_indices(tmp_path):
    folder = tmp_path / "derived" / "powerfulpromptft_glue_pretrain" / "MNLI"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps({"0": {"text_a": "a", "text_b": "b", "label": 0}, "²": {}}), encoding="utf-8")
    (folder / "dev.json").write_text(json.dumps({"0": {"text_a": "a", "text_b": "b", "label": 0}}), encoding="utf-8")
    with pytest.raises(DataError, match='keyed by "0", "1"'):
        load_splits(CATALOG["glue/mnli"], tmp_path, seed=0)
