"""`transferkit predict` and `transferkit evaluate`: a stored expert used on texts, files and tasks."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.common import (
    ArtifactsOption,
    JsonOption,
    QuietOption,
    RegistryOption,
    err,
    global_options,
    registry_from,
    out,
    print_json,
)
from transferkit.cli.options import OUTPUT, STORE, OutputOptions, StoreOptions, store_options, with_options
from transferkit.errors import InvalidInputError

if TYPE_CHECKING:
    from transferkit.inference import ExpertModel, Prediction

ExpertArgument = Annotated[str, typer.Argument(help="Expert id, id prefix, name or alias.")]
PredictPrecision = Annotated[str, typer.Option(help="fp32, or bf16: the frozen backbone's weights held in bf16.")]
PredictModel = Annotated[
    Optional[str], typer.Option("--model", help="Backbone (default: the one the expert was trained on; must be the same weights).")
]
BatchOption = Annotated[int, typer.Option(help="Inputs per forward pass.")]
ColumnOption = Annotated[
    Optional[list[str]],
    typer.Option("--column", "-c", help="Read input FIELD from file column COLUMN (FIELD=COLUMN, repeatable); default: "
                                        "columns named like the task's inputs, or text/text_pair."),
]
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def register(app: typer.Typer) -> None:
    """Add `predict` and `evaluate` to the CLI."""
    app.command("predict")(predict_command)
    app.command("evaluate")(evaluate_command)


def predict_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    text: Annotated[Optional[str], typer.Argument(help="The text to classify (default: --input FILE, or one input per stdin line).")] = None,
    text_pair: Annotated[Optional[str], typer.Argument(help="The second text, for pair tasks (e.g. the hypothesis).")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="CSV, TSV, JSONL or Parquet file of inputs.")] = None,
    column: ColumnOption = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the predictions to a new .csv, .tsv, .jsonl or .parquet file.")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per input on stdout.")] = False,
    batch_size: BatchOption = 64,
    precision: PredictPrecision = "fp32",
    model: PredictModel = None,
    registry_url: RegistryOption = None,
    artifacts: ArtifactsOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Labels and probabilities (or the score, for regression) for texts given here, on stdin or in a file.

    Stdin: one input per line; for pair tasks the two texts separated by a tab.
    """
    from transferkit.inference import file_inputs, load_predictor

    if input_file is not None and text is not None:
        raise InvalidInputError("give texts as arguments or --input FILE, not both")
    if output is not None and output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidInputError(f"--output must end in {', '.join(OUTPUT_SUFFIXES)}, got {output.name!r}")
    if output is not None and output.exists():
        raise InvalidInputError(f"{output} already exists; pass a new --output")
    if column and input_file is None:
        raise InvalidInputError("--column maps the columns of an --input file")
    if sum([as_json, jsonl, output is not None]) > 1:
        raise InvalidInputError("choose one of --json, --jsonl and --output")
    registry = registry_from(global_options(ctx, registry_url, None, artifacts))
    record = registry.get_expert(expert)  # before reading stdin: an unknown expert is reported without waiting for input
    predictor = load_predictor(registry, record, model=model, precision=precision)
    fields = predictor.inputs.input_fields
    if input_file is not None:
        rows = file_inputs(input_file, predictor.inputs, _column_map(column))
        inputs = [texts for _, texts in rows]
    elif text is not None:
        inputs = [(text,) if text_pair is None else (text, text_pair)]
    else:
        inputs = _stdin_inputs(len(fields))
    predictions = predictor.predict(inputs, batch_size=batch_size, show_progress=not quiet)
    records = [_row(fields, texts, p) for texts, p in zip(inputs, predictions)]
    if output is not None:
        _write(output, records)
        err.print(f"wrote {len(records)} predictions of {record.name} to {output}", markup=False, highlight=False, soft_wrap=True)
    elif as_json:
        print_json({"expert": {"id": record.id, "name": record.name, "task": record.task_name}, "predictions": records})
    elif jsonl:
        for row in records:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        _print_table(predictor, inputs, predictions)


def _column_map(options: list[str] | None) -> dict[str, str]:
    mapping = {}
    for option in options or []:
        field, sep, column = option.partition("=")
        if not sep or not field or not column:
            raise InvalidInputError(f"--column must be FIELD=COLUMN, got {option!r}")
        mapping[field] = column
    return mapping


def _stdin_inputs(count: int) -> list[tuple[str, ...]]:
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidInputError("give a TEXT argument, --input FILE, or pipe one input per line on stdin")
    inputs = []
    for number, line in enumerate(sys.stdin.read().splitlines(), start=1):
        if not line.strip():
            continue
        texts = tuple(line.split("\t")) if count > 1 else (line,)
        if len(texts) != count:
            raise InvalidInputError(f"stdin line {number} has {len(texts)} tab-separated text(s); this expert reads {count}")
        inputs.append(texts)
    if not inputs:
        raise InvalidInputError("stdin held no inputs; pipe one input per line (pair tasks: two texts separated by a tab)")
    return inputs


def _row(fields: tuple[str, ...], texts: tuple[str, ...] | str, prediction: Prediction) -> dict:
    values = (texts,) if isinstance(texts, str) else texts
    return {**dict(zip(fields, values)), **prediction.to_dict()}


def _print_table(predictor: ExpertModel, inputs: list, predictions: list[Prediction]) -> None:
    table = Table(title=f"{predictor.expert.name} ({predictor.inputs.task_name})")
    for field in predictor.inputs.input_fields:
        table.add_column(field, overflow="fold", max_width=60)
    regression = predictor.inputs.is_regression
    for column in ("score",) if regression else ("label", "probability"):
        table.add_column(column)
    for texts, prediction in zip(inputs, predictions):
        values = [*texts]
        values += [f"{prediction.score:.4f}"] if regression else [str(prediction.label), f"{prediction.score:.4f}"]
        table.add_row(*values)
    out.print(table)


def _write(path: Path, records: list[dict]) -> None:
    from transferkit.interop.output import write_new_file

    flat = [{k: v for k, v in row.items() if k != "probabilities"} | {f"p_{name}": p for name, p in (row["probabilities"] or {}).items()}
            for row in records]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        data = "".join(json.dumps(row) + "\n" for row in records).encode()
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(flat), buffer)
        data = buffer.getvalue()
    else:
        import csv

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(flat[0]) if flat else ["label"], delimiter="\t" if suffix == ".tsv" else ",",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        data = text.getvalue().encode()
    write_new_file(path, data)


@with_options(locations=STORE, output=OUTPUT)
def evaluate_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    task: Annotated[str, typer.Option("--task", help="Catalog or custom task, or a labelled .csv/.tsv/.jsonl/.parquet file.")],
    split: Annotated[str, typer.Option(help="dev or test (a task's split; ignored for a file).")] = "test",
    label_map: Annotated[
        Optional[str], typer.Option(help="expert_label=task_label,... when the task names the expert's labels differently.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Split seed (default: the expert's training seed).")] = None,
    column: ColumnOption = None,
    label_column: Annotated[str, typer.Option(help="A labelled file's label column.")] = "label",
    batch_size: BatchOption = 64,
    precision: PredictPrecision = "fp32",
    model: PredictModel = None,
    locations: StoreOptions = None,
    output: OutputOptions = None,
) -> None:
    """Score an expert on a task's split or a labelled file: official metrics with a 95% interval, stored on the expert."""
    from transferkit.evaluation import EvaluationJob, evaluate_expert, parse_label_map
    from transferkit.inference import load_predictor

    options = store_options(ctx, locations)
    path = Path(task)
    is_file = path.suffix.lower() in OUTPUT_SUFFIXES and path.is_file()
    job = EvaluationJob(
        task=None if is_file else task, data_file=path if is_file else None, split=split, label_map=parse_label_map(label_map),
        seed=seed, data_dir=options.data_dir, batch_size=batch_size, columns=_column_map(column), label_column=label_column,
        show_progress=not output.quiet, command=["transferkit", *sys.argv[1:]],
    )
    registry = registry_from(options)
    record = registry.get_expert(expert)
    evaluation = evaluate_expert(registry, load_predictor(registry, record, model=model, precision=precision), job)
    if output.as_json:
        print_json(evaluation.to_dict())
        return
    interval = evaluation.interval or {}
    score = "n/a" if evaluation.score is None else f"{evaluation.score:.4f}"
    bounds = f" [95% interval {interval['low']:.4f}, {interval['high']:.4f}]" if "low" in interval else ""
    out.print(
        f"evaluation {evaluation.id} of {record.name} on {evaluation.task_name} {evaluation.split} ({evaluation.examples} examples): "
        f"{evaluation.metric} {score}{bounds}; all metrics {json.dumps(evaluation.metrics)}; stored on the expert",
        markup=False, highlight=False,
    )
