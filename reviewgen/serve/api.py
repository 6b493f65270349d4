"""The scoring HTTP API (FastAPI), independent of Ray: request/response models, auth, limits (settings:
`reviewgen.serve.config`).

`reviewgen.serve.app` builds this app inside each Serve replica (late-bound ingress), so the request models
carry the configured limits and show them in the OpenAPI schema. The app talks to its backend through a
small protocol (`ScoreBackend`), which keeps it testable without Ray.

Error shape (every 4xx/5xx this app produces):
    {"error": {"status": 422, "code": "validation_error", "message": "...",
               "fields": [{"field": "reviews[0].text", "message": "...", "type": "..."}]}}
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from reviewgen.serve.config import ServeConfig

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
KNOWN_ROUTES = frozenset({"/healthz", "/readyz", "/v1/score", "/v1/model", "/v1/stats", "/docs", "/openapi.json"})


class ScoreBackend(Protocol):
    """What the API needs from the serving side (the Serve ingress, or a stub in tests)."""

    async def readiness(self) -> str | None: ...  # None when ready, else the reason it is not
    async def model_info(self) -> dict[str, Any]: ...
    async def stats(self) -> dict[str, Any]: ...
    async def score(self, reviews: list[dict[str, Any]]) -> dict[str, Any]: ...  # {"model_version", "results"}
    def record_request(self, route: str, status: int, seconds: float) -> None: ...


class BackendUnavailable(Exception):
    """Scoring cannot be done now (replicas lost or unavailable): 503 with a Retry-After header."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error in the API's stable shape."""
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field_name(loc: tuple | list) -> str:
    """("body", "reviews", 0, "text") -> "reviews[0].text"; a body-level error -> "body"."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def _validation_fields(exc: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for err in exc.errors():
        loc = err.get("loc", ())
        name = "body" if err.get("type") == "json_invalid" else _field_name(loc)
        fields.append({"field": name, "message": str(err.get("msg", "invalid")), "type": str(err.get("type", ""))})
    return fields


def make_models(cfg: ServeConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request/response models carrying this config's limits (so /openapi.json documents them)."""
    short = Annotated[str | None, Field(default=None, max_length=cfg.max_field_chars)]

    class Review(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        text: str = Field(min_length=1, max_length=cfg.max_text_chars, description="review body")
        product_title: short = None
        category: short = None
        rating: int | None = Field(default=None, ge=1, le=5, description="star rating 1..5")
        language: Literal["en", "zh"] | None = None

        @field_validator("text")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("text must not be empty or whitespace only")
            return v

        @field_validator("text", "product_title", "category")
        @classmethod
        def _encodable(cls, v: str | None) -> str | None:
            # JSON allows lone surrogates ("\ud800"); the tokenizer cannot encode them.
            if v is not None:
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError("string contains invalid unicode (lone surrogate)") from e
            return v

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        reviews: list[Review] = Field(min_length=1, max_length=cfg.max_reviews_per_request)

    return Review, ScoreRequest


class Flags(BaseModel):
    copy_span: int | None = Field(None, description="longest span (tokens) seen in training; null if disabled")
    copied: bool | None = Field(None, description="copy_span >= the copy threshold; null if disabled")
    pii: dict[str, int] | None = Field(None, description="PII counts by kind; null if disabled")
    has_pii: bool | None = None
    machine_1pct: bool | None = Field(
        None,
        description="p_human below the threshold that flags 1% of the model's "
        "human validation reviews; null when unscored or the model has no threshold",
    )
    machine_5pct: bool | None = Field(None, description="the same at 5% false accusations")
    ours: bool | None = Field(
        None,
        description="our generator's keyed watermark is detected at its threshold "
        "(see signals.watermark_z); null when the endpoint has no watermark key",
    )


class Signals(BaseModel):
    d_prob: float | None = Field(None, description="the discriminator's calibrated probability of human text")
    mean_logprob: float | None = Field(None, description="mean token log-probability under the generator")
    mean_log_rank: float | None = Field(None, description="mean log(1 + rank) of each token under the generator")
    binoculars: float | None = Field(
        None,
        description="log-perplexity over the generator/reference cross-entropy; "
        "null when the model has no reference network",
    )
    out_of_domain: float | None = Field(
        None,
        description="how far the review's signals lie from the human reviews "
        "the detector was fitted on: 0 typical, 1 far (p_human is then moved "
        "toward 0.5 rather than claim human authorship); null without a detector",
    )
    watermark_z: float | None = Field(
        None,
        description="z-score of the keyed watermark (green tokens over "
        "chance), the best over the configured keys; null without a key",
    )


class ReviewScore(BaseModel):
    p_human: float | None = Field(
        description="calibrated probability that a human wrote the review; null when "
        "the text cannot be scored (the reason is in `reasons`)"
    )
    rating_pred: int | None = Field(
        description="star rating 1..5 predicted from the review text alone (not from the request's rating); "
        "null when the text cannot be scored"
    )
    signals: Signals | None = Field(None, description="the per-review signals behind p_human")
    flags: Flags
    reasons: list[str] = Field(
        default_factory=list,
        description="the output filter's failed rules, in its order "
        "(empty, broken_text, too_short, too_long, pii, language_mismatch, memorized, "
        "low_score), after the scorer's reason for a null p_human (no_words, repetitive, "
        "...); reported only, never rejected",
    )


class ScoreResponse(BaseModel):
    model_version: str = Field(
        description="content hash of the model that scored this request (during a "
        "rollout, old and new versions answer side by side)"
    )
    results: list[ReviewScore]


def _add_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, HTTP errors and an unavailable backend in the one error body of the API
    (`error_response`), with the fields at fault and, where a retry helps, Retry-After."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _validation_fields(exc)
        code = "invalid_json" if any(f["type"] == "json_invalid" for f in fields) else "validation_error"
        msg = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return error_response(422, code, msg, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        # 400/413 come from reading/decoding the body (e.g. not UTF-8, too large): name the body as the field.
        fields = (
            [{"field": "body", "message": str(exc.detail), "type": code}] if exc.status_code in (400, 413) else None
        )
        return error_response(exc.status_code, code, str(exc.detail), fields, headers=getattr(exc, "headers", None))

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        return error_response(503, "unavailable", str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def make_api(backend: ScoreBackend, cfg: ServeConfig, token: str | None) -> FastAPI:
    """The FastAPI app for one replica; `token` turns on bearer auth for all but /healthz and /readyz."""
    _, ScoreRequest = make_models(cfg)
    app = FastAPI(
        title="reviewgen scorer",
        version="1",
        description="Scores product reviews: calibrated p_human, predicted rating, copy/PII flags.",
    )

    _add_error_handlers(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        reason = await backend.readiness()
        if reason is not None:
            return error_response(503, "not_ready", reason, headers={"Retry-After": "1"})
        return {"status": "ready", "model_version": (await backend.model_info())["model_version"]}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return await backend.model_info()

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return await backend.stats()

    async def score(req):
        reviews = [r.model_dump() for r in req.reviews]
        try:
            return await asyncio.wait_for(backend.score(reviews), timeout=cfg.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(504, "timeout", f"scoring took longer than {cfg.request_timeout_s}s")

    # The request model is built at run time, so set the annotation FastAPI reads (string annotations from
    # `from __future__ import annotations` could not resolve a local class).
    score.__annotations__ = {"req": ScoreRequest}
    app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses={
            401: {"description": "missing/bad token"},
            413: {"description": "body too large"},
            422: {"description": "invalid request"},
            503: {"description": "replicas lost or unavailable; retry after Retry-After seconds"},
            504: {"description": "timed out"},
        },
    )(score)

    app.add_middleware(GuardMiddleware, backend=backend, token=token, max_body_bytes=cfg.max_body_bytes)
    return app


class GuardMiddleware:
    """Pure ASGI middleware: bearer auth, body-size limit, per-request metrics (route + status)."""

    def __init__(self, app, backend: ScoreBackend, token: str | None, max_body_bytes: int):
        self.app, self.backend, self.token, self.max_body_bytes = app, backend, token, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = _relative_path(scope)
        route = path if path in KNOWN_ROUTES else "other"
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            early = self._reject(scope, path)
            if early is not None:
                await early(scope, receive, send_wrapper)
            else:
                await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            self.backend.record_request(route, status["code"], time.perf_counter() - start)

    def _reject(self, scope, path: str) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and path not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return error_response(
                    401, "unauthorized", "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(
                    400,
                    "bad_request",
                    f"invalid Content-Length {length!r}",
                    [{"field": "body", "message": "bad Content-Length", "type": "header"}],
                )
            if n > self.max_body_bytes:
                return error_response(
                    413,
                    "payload_too_large",
                    f"body is {n} bytes; the limit is {self.max_body_bytes}",
                    [{"field": "body", "message": "too large", "type": "size"}],
                )
        return None

    def _limited(self, receive):
        """Count body bytes as they arrive (chunked bodies have no Content-Length)."""
        seen = 0
        limit = self.max_body_bytes

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises HTTPExceptions from body reading; our handler makes it JSON.
                    raise StarletteHTTPException(413, f"body exceeds the limit of {limit} bytes")
            return message

        return wrapped


def _relative_path(scope) -> str:
    """Request path with the app's route prefix (root_path) removed."""
    path = scope.get("path", "/")
    root = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def log_record(event: str, **fields: Any) -> str:
    """One JSON log line (callers never pass review text unless log_review_text is on)."""
    return json.dumps({"event": event, **fields}, ensure_ascii=False, default=str)
