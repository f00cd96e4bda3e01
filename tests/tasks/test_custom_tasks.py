"""Custom tasks from users' files: every format, both split arrangements, errors that point at field and row."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transferkit.errors import DataError, InvalidInputError
from transferkit.tasks import load_splits
from transferkit.tasks.custom import CustomTask, read_task_file

HEADER = '''name = "{name}"
description = "Given a short review, the task is to decide whether it is positive or negative."
text_fields = {text_fields}
label_names = ["negative", "positive"]
'''
REVIEWS = [("a fine film", "positive"), ("dull and slow", "negative"), ("loved it", "positive"), ("a waste", "negative")] * 5


def write_spec(folder: Path, body: str, name: str = "toy/reviews", text_fields: str = '["text"]') -> Path:
    spec = folder / "task.toml"
    spec.write_text(HEADER.format(name=name, text_fields=text_fields) + textwrap.dedent(body))
    return spec


def write_csv(path: Path, rows=REVIEWS, header="text,label") -> Path:
    path.write_text(header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    return path


def test_csv_pool_is_held_out_by_seed_and_fingerprinted(tmp_path):
    write_csv(tmp_path / "reviews.csv")
    spec = write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n\n[split]\ndev_fraction = 0.2\ntest_fraction = 0.1\n')
    task = read_task_file(spec, None)
    assert task.name == "toy/reviews" and task.num_labels == 2 and task.metrics == ("accuracy",)
    [file] = task.files
    assert file.base == "spec" and file.rows == 20 and file.format == "csv" and len(file.sha256) == 64
    splits = load_splits(task, None, seed=3)
    assert splits.sizes == {"train": 14, "dev": 4, "test": 2}
    assert splits.train[0].texts == ("a fine film",) and {e.label for e in splits.train} == {0, 1}
    assert splits.protocol["source"] == "custom" and splits.protocol["files"][0]["sha256"] == file.sha256
    assert load_splits(task, None, seed=3).fingerprint == splits.fingerprint
    assert load_splits(task, None, seed=4).fingerprint != splits.fingerprint  # the run's seed draws the hold-out
    # to_dict is what the registry stores: it rebuilds the same task.
    assert CustomTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_every_format_reads_the_same_examples(tmp_path):
    texts = [t for t, _ in REVIEWS]
    labels = [label for _, label in REVIEWS]
    (tmp_path / "r.tsv").write_text("".join(f"{label}\t{t}\n" for t, label in REVIEWS))  # header-less
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n\n" for t, label in REVIEWS))
    pq.write_table(pa.table({"text": texts, "label": [["negative", "positive"].index(x) for x in labels]}), tmp_path / "r.parquet")
    (tmp_path / "pos.txt").write_text("".join(f"  {t}\n" for t, label in REVIEWS if label == "positive") + "\n")
    (tmp_path / "neg.lines").write_text("".join(f"{t}\n" for t, label in REVIEWS if label == "negative"))
    bodies = {
        "tsv": '[[files]]\npath = "r.tsv"\ncolumns = ["label", "text"]\n',
        "jsonl": '[[files]]\npath = "r.jsonl"\n',
        "parquet": '[[files]]\npath = "r.parquet"\n',
        "lines": '[[files]]\npath = "pos.txt"\nlabel = "positive"\n[[files]]\npath = "neg.lines"\nformat = "lines"\nlabel = 0\n',
    }
    expected = sorted(zip(texts, [["negative", "positive"].index(x) for x in labels]))
    for fmt, body in bodies.items():
        task = read_task_file(write_spec(tmp_path, body), None)
        splits = load_splits(task, None, seed=0)
        seen = sorted((e.texts[0], e.label) for e in splits.train + splits.dev + splits.test)
        assert seen == expected, fmt


def test_split_files_with_dev_held_out_from_train(tmp_path):
    write_csv(tmp_path / "train.csv")
    write_csv(tmp_path / "test.csv", REVIEWS[:6])
    body = '''
        [[files]]
        path = "train.csv"
        split = "train"
        [[files]]
        path = "test.csv"
        split = "test"
        [split]
        seed = 7
    '''
    task = read_task_file(write_spec(tmp_path, body), None)
    assert task.holdout.fractions() == {"dev": 0.1}
    a, b = load_splits(task, None, seed=1), load_splits(task, None, seed=2)
    assert a.sizes == {"train": 18, "dev": 2, "test": 6}
    assert a.fingerprint == b.fingerprint  # split.seed fixes the hold-out whatever the run's seed
    assert a.protocol["split_seed"] == 7


def test_pairs_and_regression(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"a": f"sentence {i}", "b": f"other {i}", "score": i / 4}) + "\n" for i in range(12)
    ))
    body = '''
        name = "sim/pairs"
        description = "Given two sentences, the task is to rate how similar they are."
        text_fields = ["a", "b"]
        label_field = "score"
        regression = true
        [[files]]
        path = "pairs.jsonl"
    '''
    spec = tmp_path / "pairs.toml"
    spec.write_text(textwrap.dedent(body))
    task = read_task_file(spec, None)
    assert task.is_regression and task.metrics == ("pearson", "spearman")
    splits = load_splits(task, None, seed=0)
    assert all(len(e.texts) == 2 for e in splits.train) and isinstance(splits.train[0].label, float)


def test_relative_paths_fall_back_to_the_data_dir_and_follow_it(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_csv(data / "sub" / "reviews.csv")
    spec = write_spec(tmp_path / "data" / "..", '[[files]]\npath = "sub/reviews.csv"\n')
    with pytest.raises(InvalidInputError, match=r"files\[0\]\.path.*sub/reviews.csv.*no --data-dir"):
        read_task_file(spec, None)
    task = read_task_file(spec, data)
    assert task.files[0].base == "data_dir"
    # Another user with the same registry keeps the data elsewhere: the file is found under their data dir.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data, elsewhere)
    shutil.rmtree(data)
    assert load_splits(task, elsewhere, seed=0).fingerprint
    with pytest.raises(DataError, match="relative to the data dir"):
        load_splits(task, None, seed=0)


def test_a_changed_file_is_refused(tmp_path):
    path = write_csv(tmp_path / "reviews.csv")
    task = read_task_file(write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n'), None)
    write_csv(path, REVIEWS[:-1])
    with pytest.raises(DataError, match="changed since toy/reviews was registered"):
        load_splits(task, None, seed=0)


@pytest.mark.parametrize(
    ("body", "name", "fragments"),
    [
        ('[[files]]\npath = "r.csv"\nlable = "x"\n', "toy/reviews", ["files[0].lable", "did you mean label?"]),
        ('labels = ["a"]\n[[files]]\npath = "r.csv"\n', "toy/reviews", ["labels: unknown field"]),
        ('[[files]]\npath = "r.csv"\n', "sst2", ["name", "glue/sst2"]),
        ('[[files]]\npath = "r.csv"\n', "glue/mine", ["name", "reserved"]),
        ('[[files]]\npath = "r.csv"\n', "Bad Name!", ["name", "lower-case"]),
        ('metrics = ["pearson"]\n[[files]]\npath = "r.csv"\n', "toy/reviews", ["metrics", "not a classification metric"]),
        ('regression = true\n[[files]]\npath = "r.csv"\n', "toy/reviews", ["label_names", "regression"]),
        ('[[files]]\npath = "r.data"\n', "toy/reviews", ["files[0].format", "r.data"]),
        ('[[files]]\npath = "r.csv"\nformat = "lines"\n', "toy/reviews", ["files[0].label", "lines file"]),
        ('[[files]]\npath = "r.csv"\nlabel = "neutral"\n', "toy/reviews", ["files[0].label", "neutral"]),
        ('[[files]]\npath = "missing.csv"\n', "toy/reviews", ["files[0].path", "missing.csv", "not found"]),
        ('[[files]]\npath = "r.csv"\nsplit = "train"\n[[files]]\npath = "r.csv"\n', "toy/reviews", ["files[1].split", "every file"]),
        ('[[files]]\npath = "r.csv"\nsplit = "test"\n', "toy/reviews", ["files", "train"]),
        ('[[files]]\npath = "r.csv"\n[split]\ndev_fraction = 0.6\ntest_fraction = 0.5\n', "toy/reviews", ["split", "training"]),
        ('[[files]]\npath = "r.csv"\nsplit = "train"\n[[files]]\npath = "r.csv"\nsplit = "dev"\n[split]\ndev_fraction = 0.2\n',
         "toy/reviews", ["split.dev_fraction", "drop"]),
        ("", "toy/reviews", ["files", "missing"]),
        ("[[files]\n", "toy/reviews", ["not valid TOML"]),
        ('description = "twice"\n', "toy/reviews", ["not valid TOML", "line 5"]),
    ],
)
def test_spec_errors_name_the_field(tmp_path, body, name, fragments):
    write_csv(tmp_path / "r.csv")
    spec = write_spec(tmp_path, body, name=name)
    with pytest.raises(InvalidInputError) as info:
        read_task_file(spec, None)
    message = str(info.value)
    assert message.startswith(str(spec)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_spec_file_is_one_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_task_file(tmp_path / "nope.toml", None)


def test_data_errors_name_the_file_and_row(tmp_path):
    cases = {
        "bad_label.csv": ('text,label\n"fine",positive\n"multi\nline",negative\n"ok",postive\n', "bad_label.csv:5", "postive"),
        "empty.csv": ('text,label\n"fine",positive\n"",negative\n', "empty.csv:3", "'text' is empty"),
        "short.csv": ("text,label\nfine,positive\nno label\n", "short.csv:3", "1 fields"),
        "nocol.csv": ("sentence,label\nfine,positive\n", "nocol.csv:1", "no column 'text'"),
        "bad.jsonl": ('{"text": "fine", "label": 1}\n{"text": "x", \n', "bad.jsonl:2", "not valid JSON"),
        "number.jsonl": ('{"text": 5, "label": 1}\n', "number.jsonl:1", "not text"),
        "latin1.csv": ("text,label\nfine,positive\ncaf\xe9,negative\n".encode("latin-1"), "latin1.csv:3", "UTF-8"),
    }
    for file, (content, where, fragment) in cases.items():
        path = tmp_path / file
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(DataError) as info:
            read_task_file(write_spec(tmp_path, f'[[files]]\npath = "{file}"\n'), None)
        assert where in str(info.value) and fragment in str(info.value), str(info.value)
    pq.write_table(pa.table({"text": ["fine", "good", "bad"], "label": [1, 0, 7]}), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet row 3: unknown toy/reviews label 7"):
        read_task_file(write_spec(tmp_path, '[[files]]\npath = "r.parquet"\n'), None)
