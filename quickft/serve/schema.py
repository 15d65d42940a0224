"""The request bodies quickft serve accepts (OpenAI's, strict: an unknown field is a 400) and OpenAI's error shape."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4
"""Stop sequences per request (OpenAI's limit)."""
MAX_STOP_CHARS = 256
"""The longest stop sequence: ample for an end marker, and a bound on what each generated piece is checked against."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class ApiRequest(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"stop: at most {MAX_STOP} sequences, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: an empty string would stop at once", param="stop")
        if longest := max((len(s) for s in stops if len(s) > MAX_STOP_CHARS), default=0):
            raise ApiError(
                400, f"stop: at most {MAX_STOP_CHARS} characters per sequence, got {longest:,}", param="stop"
            )
        return stops


class ChatRequest(ApiRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(ApiRequest):
    prompt: str | list[str]


class ApiError(Exception):
    """A request quickft cannot answer: sent as OpenAI's error object with this HTTP status."""

    TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def parse(raw: bytes, model: type[ApiRequest]) -> ApiRequest:
    """The body as `model`, or a 400 naming the field at fault."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # the decoder's own guard against deep nesting ([[[[...) of Python's recursion limit
        raise ApiError(400, "the body is nested too deeply to be a request", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [_problem(error, model) for error in e.errors()]
        param = ".".join(str(p) for p in e.errors()[0]["loc"]) or None
        raise ApiError(400, "; ".join(dict.fromkeys(problems)), param=param) from None  # every problem at once


def _problem(error: dict, model: type[ApiRequest]) -> str:
    param = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        takes = f" (it takes {', '.join(model.model_fields)})" if len(error["loc"]) == 1 else ""
        return f"{param}: not supported by quickft serve{takes}"
    if error["type"] == "missing":
        return f"{param}: required"
    return f"{param}: {error['msg']} (got {json.dumps(error.get('input'), default=str)[:80]})"
