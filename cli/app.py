"""The `transferkit` command line: results on stdout, progress and errors on stderr.

Commands live here or in sibling modules that `register(app)` them (see the end of this file);
what they share (option types, consoles, registry access) is in `transferkit.cli.common`.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Annotated, Optional

import click
import typer
from rich.table import Table

from transferkit.cli.common import (
    DEFAULT_SPARSITY_WEIGHT,
    compact_json,
    SparsityWeightOption,
    ArtifactsOption,
    DataDirOption,
    HeadInitOption,
    GlobalOptions,
    JsonOption,
    MethodOptions,
    RegistryOption,
    TaskFileOption,
    SourcePromptScaleOption,
    ZeroExpertOption,
    err,
    global_options,
    mib,
    registry_from,
    out,
    primary_value,
    print_json,
)
from transferkit.cli.compare import compare_command
from transferkit.cli.options import (
    OUTPUT,
    RUN,
    STORE,
    TRAINING,
    TRANSFER_TRAINING,
    OutputOptions,
    RunOptions,
    StoreOptions,
    TrainingOptions,
    job_options,
    store_options,
    with_options,
)
from transferkit.errors import InvalidInputError, NotFoundError, TrainingInterrupted, TransferkitError, TransferkitWarning
from transferkit.training.interrupt import ImmediateStop

app = typer.Typer(
    name="transferkit",
    help="Train parameter-efficient experts, keep them in a registry with lineage and cost, and compose them for new tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main_callback(
    ctx: typer.Context, registry_url: RegistryOption = None, data_dir: DataDirOption = None, artifacts: ArtifactsOption = None
) -> None:
    ctx.obj = GlobalOptions(registry_url, data_dir, artifacts)


@app.command("methods")
def methods_command(
    model: Annotated[Optional[str], typer.Option(help="Backbone to count parameters on (default: packaged MiniLM).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List expert methods with their options and trainable-parameter count on the backbone."""
    from transferkit.backbone import load_backbone
    from transferkit.methods import METHODS

    backbone = load_backbone(model)
    rows = []
    for method in METHODS.values():
        try:
            expert = method.build(method.config_class(), backbone)
        except InvalidInputError as error:  # e.g. prefix tuning on a decoder: listed with the reason
            count, unsupported = None, str(error)
        else:
            count, unsupported = sum(t.numel() for t in expert.export_tensors().values()), None
            expert.detach()
        rows.append(
            {
                "name": method.name,
                "description": method.description,
                "composable": method.composable,
                "trainable_params": count,
                "unsupported": unsupported,
                "recommended_lr": method.config_class.recommended_lr,
                "options": [{"name": n, "default": d, "help": h} for n, d, h in method.config_class.describe_fields()],
            }
        )
    if as_json:
        print_json({"backbone": backbone.fingerprint.to_dict(), "methods": rows})
        return
    table = Table(title=f"methods on {backbone.fingerprint.name} (params exclude the task head)")
    for column in ("method", "params", "lr", "options (-O KEY=VALUE)", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        options = "\n".join(f"{o['name']}={o['default']}" for o in row["options"])
        params = f"{row['trainable_params']:,}" if row["unsupported"] is None else "not supported"
        description = row["description"] if row["unsupported"] is None else f"{row['description']} ({row['unsupported']})"
        table.add_row(row["name"], params, str(row["recommended_lr"]), options, description)
    out.print(table)


@app.command("train-source")
@with_options(training=TRAINING, run=RUN, locations=STORE, output=OUTPUT)
def train_source_command(
    ctx: typer.Context,
    task: Annotated[
        Optional[str], typer.Argument(help="Catalog or registered custom task, e.g. glue/sst2 or a unique bare name like sst2.")
    ] = None,
    task_file: TaskFileOption = None,
    method: Annotated[str, typer.Option(help="Expert method (see `transferkit methods`).")] = "lora",
    method_option: MethodOptions = None,
    training: TrainingOptions = None,
    name: Annotated[Optional[str], typer.Option(help="Expert name (default: <task>-<method>, made unique).")] = None,
    run: RunOptions = None,
    locations: StoreOptions = None,
    output: OutputOptions = None,
) -> None:
    """Train a source expert for a catalog or custom task and store it in the registry."""
    from transferkit.workflows import SourceJob, train_source

    options = store_options(ctx, locations)
    job = SourceJob(
        task=task, task_file=task_file, method=method, method_options=method_option or [], name=name,
        **job_options(training, run, output, options),
    )
    registry = registry_from(options)
    expert = train_source(registry, job)
    if output.as_json:
        from transferkit.inspection import expert_details

        print_json(expert_details(registry, expert, verify=False))
        return
    _print_expert_summary(expert)


def _print_expert_summary(expert) -> None:
    metrics = expert.metrics
    out.print(
        f"stored expert [bold]{expert.name}[/] (id {expert.id}) for {expert.task_name} with {expert.method}: "
        f"dev {metrics.get('primary')} {primary_value(metrics, 'dev')}, test {primary_value(metrics, 'test')}"
    )


@app.command("transfer")
@with_options(training=TRANSFER_TRAINING, run=RUN, locations=STORE, output=OUTPUT)
def transfer_command(
    ctx: typer.Context,
    target: Annotated[
        Optional[str], typer.Option("--target", help="Target task (catalog or registered custom), e.g. rte or superglue/cb.")
    ] = None,
    task_file: TaskFileOption = None,
    strategy: Annotated[
        str, typer.Option(help="pemt (learned sparse gate), average, spot, scratch, attempt (per-example prompt attention), "
                               "merge (linear/ties/dare merge, -O combine=...), lorahub (gradient-free merge weights) or "
                               "arrow (per-token routing by the sources' singular vectors).")
    ] = "pemt",
    sources: Annotated[
        Optional[str], typer.Option(help="Comma-separated source expert ids or names (default: chosen from the registry).")
    ] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Keep the k sources most similar to the target (default: all, at most 16).")] = None,
    route_top_k: Annotated[
        Optional[int], typer.Option(help="Experts active per example and layer (default: all chosen sources, dense).")
    ] = None,
    sparsity_weight: SparsityWeightOption = DEFAULT_SPARSITY_WEIGHT,
    gate_input: Annotated[
        str,
        typer.Option(help="What pemt's gate reads: 'states' (each layer's task-prompt states, PEMT) or 'task' (the task "
                          "prompt alone: one set of weights for every input, so `transferkit merge` can collapse the mixture)."),
    ] = "states",
    zero_expert: ZeroExpertOption = None,
    source_prompt_scale: SourcePromptScaleOption = None,
    head_init: HeadInitOption = "auto",
    gate_init: Annotated[
        str, typer.Option(help="How pemt's gate starts: uniform, or arrow (Arrow's routing of the task state by the LoRA "
                               "sources' top singular vectors).")
    ] = "uniform",
    method: Annotated[
        Optional[str],
        typer.Option(help="The target's own trainable expert for pemt, average and scratch (default adapter); "
                          "for spot, the method of the source to pick. merge, lorahub and arrow take -O target=... instead."),
    ] = None,
    method_option: MethodOptions = None,
    training: TrainingOptions = None,
    name: Annotated[Optional[str], typer.Option(help="Expert name (default: <task>-<strategy>, made unique).")] = None,
    run: RunOptions = None,
    locations: StoreOptions = None,
    output: OutputOptions = None,
) -> None:
    """Compose registry experts into a new expert for a target task."""
    from transferkit.composition.transfer import TransferJob, transfer

    options = store_options(ctx, locations)
    job = TransferJob(
        target=target, strategy=strategy, sources=[s.strip() for s in sources.split(",") if s.strip()] if sources else None,
        top_k=top_k, route_top_k=route_top_k, sparsity_weight=sparsity_weight, gate_input=gate_input,
        zero_expert=zero_expert, head_init=head_init, gate_init=gate_init,
        source_prompt_scale=source_prompt_scale, method=method,
        method_options=method_option or [], task_file=task_file, name=name, **job_options(training, run, output, options),
    )
    registry = registry_from(options)
    outcome = transfer(registry, job)
    if output.as_json:
        from transferkit.inspection import expert_details

        print_json(expert_details(registry, outcome.expert, verify=False))
        return
    if outcome.ranking:
        table = Table(title="sources (ranked by the mean of description and data similarity to the target)")
        for column in ("source", "task", "method", "score", "description", "data", "mean gate"):
            table.add_column(column)
        gates = outcome.expert.extra.get("gate_weights", {}).get("mean", {})
        shown = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
        for ranked in outcome.ranking:
            table.add_row(ranked.expert.name, ranked.expert.task_name, ranked.expert.method, shown(ranked.similarity),
                          shown(ranked.description_similarity), shown(ranked.data_similarity), shown(gates.get(ranked.expert.name)))
        out.print(table)
    _print_expert_summary(outcome.expert)


# Defined in transferkit.cli.compare; registered here to keep its place in `--help`.
app.command("compare")(compare_command)


@app.command("inspect")
def inspect_command(
    ctx: typer.Context,
    expert: Annotated[str, typer.Argument(help="Expert id, id prefix, name or alias, or a run id.")],
    registry_url: RegistryOption = None,
    artifacts: ArtifactsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything known about one expert (curation and stored evaluations too; verifies its artifact's sha256), or one run."""
    registry = registry_from(global_options(ctx, registry_url, None, artifacts))
    try:
        record = registry.get_expert(expert)
    except NotFoundError:
        from transferkit.cli.runs import find_run, inspect_run

        run = find_run(registry, expert)
        if run is None:
            raise
        inspect_run(registry, run, as_json)
        return
    from transferkit.inspection import expert_details

    details = expert_details(registry, record)
    if as_json:
        print_json(details)
        return
    _render_inspect(details)


def _ranking_entry(ranked: dict) -> str:
    parts = [f"description {ranked['description_similarity']:.3f}"] if ranked.get("description_similarity") is not None else []
    if ranked.get("data_similarity") is not None:
        parts.append(f"data {ranked['data_similarity']:.3f}")
    return f"{ranked['name']} ({ranked['similarity']:.3f}" + (f": {', '.join(parts)})" if parts else ")")


def _render_inspect(details: dict) -> None:
    e, run, cost = details["expert"], details["run"], details["cost"]
    table = Table(title=f"expert {e['name']} ({e['id']})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    metrics = e["metrics"]
    rows = [
        ("task", f"{e['task_name']}: {details['task']['description']}"),
        ("method", f"{e['method']} {compact_json(e['config'])}"),
        ("trainable params", f"{e['trainable_params']:,}"),
        ("backbone", f"{e['backbone'].get('name')} [{e['backbone_id']}]"),
        ("metrics (dev)", json.dumps(metrics.get("dev"))),
        ("metrics (test)", json.dumps(metrics.get("test"))),
        ("artifact", f"{details['artifact']['uri']} sha256 {e['artifact_sha256'][:16]}… verified"),
        ("run", f"{run['id']} {run['status']} seed {run['seed']}: {' '.join(run['command'])}"),
        ("hyper-parameters", compact_json(run["hyperparams"])),
        ("data", json.dumps({k: run["data_fingerprint"].get(k) for k in ("fingerprint", "sizes", "protocol")})),
        ("code", json.dumps(run["code_version"])),
        (
            "cost",
            f"{cost.get('wall_seconds')} s wall, {cost.get('device_seconds')} {cost.get('device_seconds_kind')} on "
            f"{cost.get('device_kind')} ({cost.get('device_name')}), peak memory {mib(cost.get('peak_memory_bytes'))}, "
            f"{cost.get('examples')} examples, {cost.get('tokens')} tokens, energy "
            f"{cost.get('energy_joules') if cost.get('energy_joules') is not None else 'n/a (' + str(cost.get('energy_note')) + ')'}",
        ),
    ]
    from transferkit.cli.cost import cost_summary

    for label, key in (("own cost", "own_cost"), ("amortized cost", "amortized_cost")):
        rows.append((label, cost_summary(details[key])))
    extra = e["extra"]
    if extra.get("schedule"):
        rows.append(("schedule", extra["schedule"]["reason"]))
    if extra.get("stop_reason"):
        rows.append(("stopped", f"{extra['stop_reason']} ({extra.get('steps')} steps trained)"))
    head_init = extra.get("head_init")
    if head_init and head_init.get("used"):
        rows.append(("head init", "; ".join(
            f"{m['source']}: " + ", ".join(f"{label} <- {'+'.join(rows_)} ({m['how'][label]})" for label, rows_ in m["rows"].items())
            for m in head_init["mappings"]
        )))
    elif head_init and head_init.get("mode") == "auto":
        rows.append(("head init", f"from zero: {head_init.get('reason')}"))
    merge = extra.get("merge")
    if merge:  # merge and lorahub: the recipe, and how faithful the merged expert is to it
        rows.append(("merge recipe", json.dumps(merge["recipe"])))
        faithful = merge["faithfulness"]
        rows.append(("merge faithfulness", "exact" if faithful.get("exact")
                     else f"refactored by SVD, largest relative error {faithful['max_relative_error']:.4f}"))
    if "source_prompt_scale" in extra:
        rows.append(("source prompt scale", f"{extra['source_prompt_scale']:.3f} (learned from 0; 1 is PEMT's full weight)"))
    if extra.get("gate_init"):
        rows.append(("gate init", json.dumps({layer: v["shares"] for layer, v in extra["gate_init"]["layers"].items()})))
    gates = e["extra"].get("gate_weights")
    if gates:
        label = {"merge": "merge weight per source", "lorahub": "merge weight per source", "arrow": "mean routed share per source"}
        rows.append((label.get(extra.get("strategy"), "gate (mean per source)"), json.dumps(gates["mean"])))
        if "target" in gates:  # ATTEMPT: the target prompt's own share of the attention
            rows.append(("attention on the target prompt", f"{gates['target']:.3f}"))
        if "zero_expert" in gates:
            rows.append(("gate on the zero expert", f"{gates['zero_expert']['mean']:.3f} (share of the change left unused)"))
        for layer, weights in gates.get("per_layer", {}).items():
            rows.append((f"gate {layer}", ", ".join(f"{w:.3f}" for w in weights)))
    statistics = e["extra"].get("method_statistics") or {}
    if "expert_load" in statistics:
        for layer, counts in statistics["expert_load"].items():
            rows.append((f"expert load {layer}", ", ".join(str(c) for c in counts)))
        rows.append((
            "activated prompts",
            f"per example: {statistics['top_k']} (+ shared) of {statistics['num_experts']} (+ shared) in {len(statistics['layers'])} layers"
            f" = {statistics['activated_prompts']} of {statistics['total_prompts']}",
        ))
    if e["extra"].get("ranking"):
        rows.append(("source ranking", ", ".join(_ranking_entry(r) for r in e["extra"]["ranking"])))
    from transferkit.cli.listing import curation_rows

    rows += curation_rows(details)
    for parent in details["lineage"]["parents"]:
        rows.append(("parent", f"{parent['parent_id']} role {parent['role']} weight {parent['weight']}"))
    for child in details["lineage"]["children"]:
        rows.append(("child", f"{child['child_id']} role {child['role']}"))
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


# Commands defined in sibling modules (which import `transferkit.cli.common`, never this module).
from transferkit.cli import (  # noqa: E402 - registered onto the `app` defined above
    cost,
    curation,
    gc,
    interop,
    lineage,
    merge,
    report,
    listing,
    search,
    serve,
    task,
    ui,
    use,
)

for _commands in (listing, lineage, cost, report, merge, search, interop, gc, task, use, curation, serve, ui):
    _commands.register(app)


# Usage errors: click's, and typer's own copies of them (typer >= 0.29 vendors click under `typer._click`).
_USAGE_ERRORS = (click.exceptions.ClickException, *([typer.TyperException] if hasattr(typer, "TyperException") else []))
_ABORTS = (click.exceptions.Abort, typer.Abort)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and a non-zero exit code."""
    previous = warnings.showwarning

    def show_warning(message, category, *where) -> None:  # noqa: ANN001 - warnings.showwarning's signature
        """transferkit's own warnings as one `warning:` line on stderr; other libraries' keep their format."""
        if issubclass(category, TransferkitWarning):
            err.print(f"warning: {one_line(str(message))}", markup=False, highlight=False, soft_wrap=True)
        else:
            previous(message, category, *where)

    warnings.showwarning = show_warning
    try:
        _run()
    finally:  # `main()` also runs inside other programs' processes (tests, notebooks)
        warnings.showwarning = previous


def _run() -> None:
    try:
        _require_utf8_arguments(sys.argv[1:])
        code = app(standalone_mode=False)
    except _USAGE_ERRORS as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `transferkit` or `transferkit task`: the help is the answer
            error.show()
            sys.exit(0)
        else:
            err.print(f"error: {one_line(usage_message(error))}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except _ABORTS:
        err.print("aborted")
        sys.exit(130)
    except TrainingInterrupted as error:  # not an error: one line on how to resume, the signal's exit code
        err.print(one_line(str(error)), markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except ImmediateStop as error:  # a second stop signal outside a training job's own handling
        err.print(f"interrupted: {error}", markup=False, highlight=False)
        sys.exit(error.exit_code)
    except TransferkitError as error:
        err.print(f"error: {one_line(str(error))}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _require_utf8_arguments(arguments: list[str]) -> None:
    """Undecodable command-line bytes arrive as lone surrogates, which no database or file name can hold."""
    for position, argument in enumerate(arguments, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            shown = argument.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise InvalidInputError(f"argument {position} ({shown!r}) is not valid UTF-8; pass UTF-8 text") from None


def one_line(message: str) -> str:
    """Escape line breaks and other control characters (user input echoed in a message) so it stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)


def usage_message(error: Exception) -> str:
    """A usage error as one line, with where to read the command's help."""
    message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
    context = getattr(error, "ctx", None)
    return f"{message} (see `{context.command_path} --help`)" if context is not None else message


if __name__ == "__main__":
    main()
