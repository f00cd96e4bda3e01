"""`transferkit serve`: predictions over HTTP from loaded experts, as a FastAPI (ASGI) app run by uvicorn.

`create_app(models, limits)` builds the app, so other front ends (a web UI) can reuse or mount it:

- `GET /health`: status, the experts served (name, id, task, labels, artifact sha256) and request/batch counts.
- `POST /predict` with JSON `{"expert": "<name, id or alias>", "inputs": ["text", ...]}` (pair tasks: each input is
  `["text", "text_pair"]`; `expert` may be left out when one expert is served) answers
  `{"expert": {...}, "predictions": [{"label", "label_id", "score", "probabilities"}, ...]}`, the same values
  as `transferkit predict`.

Every refusal is a 4xx with `{"error": "<one line>"}`: 400 for a body that is not a JSON object with a list of
inputs, 404 for an expert not served, 413 for a body over `max_body_bytes` (checked while reading, so an
oversize body is never held whole) or more than `max_inputs` inputs, 422 for an input the expert cannot take
(wrong number of texts, empty text).

Concurrent requests for one expert are batched: a worker takes the first waiting request, gathers more for up
to `max_wait_ms` or until `max_batch` inputs, and runs them as one forward pass on a single inference thread
(torch on a shared backbone is used by one caller at a time), then hands each request its slice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from transferkit.version import __version__
from transferkit.errors import InvalidInputError, TransferkitError
from transferkit.inference import ExpertModel, Prediction
from transferkit.tasks import Example


@dataclass(frozen=True)
class ServeLimits:
    """Request limits and batching settings."""

    max_body_bytes: int = 1 << 20
    max_inputs: int = 256
    max_batch: int = 64
    max_wait_ms: float = 10.0

    def validate(self) -> None:
        if not (self.max_body_bytes >= 64 and self.max_inputs >= 1 and self.max_batch >= 1 and 0 <= self.max_wait_ms <= 10_000):
            raise InvalidInputError(
                "--max-body-bytes must be at least 64, --max-inputs and --max-batch at least 1, --max-wait-ms between 0 and 10000"
            )


class RequestError(Exception):
    """A refused request: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    examples: list[Example]
    future: asyncio.Future


@dataclass
class Counters:
    requests: int = 0
    refused: int = 0
    batches: int = 0
    inputs: int = 0


@dataclass
class Batcher:
    """Gathers concurrent requests for one expert into batches run on the shared inference thread."""

    model: ExpertModel
    limits: ServeLimits
    executor: ThreadPoolExecutor
    counters: Counters
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def predict(self, examples: list[Example]) -> list[Prediction]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(examples, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size, deadline = len(batch[0].examples), loop.time() + self.limits.max_wait_ms / 1000
            while size < self.limits.max_batch and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
                size += len(batch[-1].examples)
            examples = [example for pending in batch for example in pending.examples]
            try:
                outputs = await loop.run_in_executor(self.executor, self.model.logits, examples, self.limits.max_batch)
                predictions = self.model.decode(outputs)
            except Exception as error:  # noqa: BLE001 - handed to every waiting request, which answers 500
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self.counters.batches += 1
            self.counters.inputs += len(examples)
            start = 0
            for pending in batch:
                if not pending.future.done():  # a client that went away no longer waits
                    pending.future.set_result(predictions[start:start + len(pending.examples)])
                start += len(pending.examples)


def expert_summary(model: ExpertModel) -> dict:
    return {
        "id": model.expert.id, "name": model.expert.name, "task": model.inputs.task_name, "inputs": list(model.inputs.input_fields),
        "labels": list(model.inputs.label_names) if model.inputs.label_names else None, "sha256": model.expert.artifact_sha256,
    }


def create_app(models: Sequence[ExpertModel], limits: ServeLimits = ServeLimits(), names: dict[str, ExpertModel] | None = None) -> FastAPI:
    """The ASGI app serving `models`; `names` adds extra request names (e.g. the alias each was started with)."""
    limits.validate()
    if not models:
        raise InvalidInputError("serve needs at least one expert")
    lookup: dict[str, ExpertModel] = {}
    for model in models:
        lookup[model.expert.id] = lookup[model.expert.name] = model
    lookup.update(names or {})
    counters = Counters()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-inference")
    batchers: dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        workers = []
        for model in models:
            batchers[model.expert.id] = Batcher(model, limits, executor, counters)
            workers.append(asyncio.create_task(batchers[model.expert.id].run()))
        yield
        for worker in workers:
            worker.cancel()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferkit", version=__version__, lifespan=lifespan,
                  summary="Predictions from parameter-efficient experts of a transferkit registry.")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "experts": [expert_summary(m) for m in models], "requests": counters.requests,
                "refused": counters.refused, "batches": counters.batches, "inputs": counters.inputs}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        counters.requests += 1
        try:
            model, examples = parse_request(await read_body(request, limits.max_body_bytes), lookup, models, limits)
        except RequestError as error:
            counters.refused += 1
            return JSONResponse({"error": str(error)}, status_code=error.status)
        try:
            predictions = await batchers[model.expert.id].predict(examples)
        except TransferkitError as error:
            return JSONResponse({"error": str(error)}, status_code=422)
        return JSONResponse({"expert": {"id": model.expert.id, "name": model.expert.name},
                             "predictions": [p.to_dict() for p in predictions]})

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body has {int(declared):,} bytes; the limit is {limit:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body exceeds the limit of {limit:,} bytes")
    return bytes(body)


def parse_request(
    body: bytes, lookup: dict[str, ExpertModel], models: Sequence[ExpertModel], limits: ServeLimits,
) -> tuple[ExpertModel, list[Example]]:
    """The expert and checked examples of a /predict body, or a RequestError."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise RequestError(400, 'send a JSON object {"expert": "<name>", "inputs": ["text", ...]} (pairs: ["text", "text_pair"])')
    unknown = sorted(set(payload) - {"expert", "inputs"})
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; a request has 'expert' and 'inputs'")
    name = payload.get("expert")
    if name is None and len(models) == 1:
        model = models[0]
    elif isinstance(name, str) and name in lookup:
        model = lookup[name]
    else:
        served = ", ".join(m.expert.name for m in models)
        raise RequestError(404 if isinstance(name, str) else 400, f"expert {name!r} is not served here (served: {served})")
    inputs = payload["inputs"]
    if not inputs:
        raise RequestError(400, "inputs is empty; send at least one input")
    if len(inputs) > limits.max_inputs:
        raise RequestError(413, f"{len(inputs)} inputs in one request; the limit is {limits.max_inputs}")
    if not all(isinstance(i, str) or (isinstance(i, list) and all(isinstance(t, str) for t in i)) for i in inputs):
        raise RequestError(400, "each input is a text or a list of texts (a pair)")
    try:
        return model, model.examples(inputs)
    except InvalidInputError as error:
        raise RequestError(422, str(error)) from None
