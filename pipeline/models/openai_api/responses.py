"""Reading what an OpenAI-compatible server answers, in realtime and in batch mode alike: a chat completion's JSON
as a Result, an answer that is not one (Malformed), and the message of an error."""

import json

from pipeline.models.backends import Request, Result


def completion_result(response: dict, choice: dict, request: Request, latency: float | None) -> Result:
    """The Result of a chat completion's JSON (realtime, or one line of a batch's output, where latency is unknown)."""
    usage = response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens, completion_tokens = (
        v if isinstance(v := usage.get(k), int) else None for k in ("prompt_tokens", "completion_tokens")
    )
    finish_reason = choice.get("finish_reason")
    message = choice["message"]
    content = message.get("content")
    if not isinstance(content, str):  # a refusal or a tool call: an answer, not a fault; asking again gives the same
        refusal = message.get("refusal")
        return Result(
            error=f"refused: {refusal}" if refusal else "response has no text",
            finish_reason=finish_reason,
            latency_s=latency,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
    logprobs = _logprobs(choice) if request.logprobs else None
    return Result(
        content,
        finish_reason=finish_reason,
        latency_s=None if latency is None else round(latency, 4),
        logprobs=logprobs,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _logprobs(choice: dict) -> list[dict]:
    """[{token, logprob, top_logprobs: [{token, logprob}]}] of the answer's tokens; Malformed when they are another
    shape."""
    try:
        return [
            {
                "token": t["token"],
                "logprob": t["logprob"],
                "top_logprobs": [{"token": a["token"], "logprob": a["logprob"]} for a in (t.get("top_logprobs") or [])],
            }
            for t in ((choice.get("logprobs") or {}).get("content") or [])
        ]
    except (AttributeError, KeyError, TypeError) as e:
        raise Malformed(
            f"HTTP 200 whose logprobs are not a list of tokens: {snippet(_dump(choice.get('logprobs')))}"
        ) from e


class Malformed(Exception):
    """A 200 answer that is not a chat completion: a proxy's error page, a misrouted base_url, JSON of another
    shape, no choices. Retried like a 500, then recorded with what came instead."""


def first_choice(response):
    """The first choice of a conforming chat completion, or Malformed saying what came instead."""
    if isinstance(response, str):  # the SDK hands back the body as text when it is not JSON
        raise Malformed(f"HTTP 200 with a body that is not JSON: {snippet(response)!r}")
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list):
        raise Malformed(f"HTTP 200 with JSON that is not a chat completion: {snippet(_dump(response))}")
    if not choices:
        raise Malformed("HTTP 200 with no choices")
    if not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        raise Malformed(f"HTTP 200 whose first choice has no message: {snippet(_dump(response))}")
    return choices[0]


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def snippet(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width] + "…"


def error_message(error) -> str:
    """What an SDK error says: the message of its JSON body when it has one, else the error's own."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(error, "message", error))
