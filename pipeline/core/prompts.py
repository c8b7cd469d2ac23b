"""A record's prompt as chat messages: the one reading of prompts for every reader of them (ingest's sources, gold
pairs, `prefab eval`'s held-out prompts). A prompt is plain text or a chat; a bad one raises BadRow naming the
field, which each caller reports with its file and line."""

import json

PROMPT_COLUMNS = ("prompt", "instruction", "question", "text", "input")
MESSAGES_COLUMNS = ("messages", "conversation", "conversations")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


class BadRow(Exception):
    """What is wrong with one row, and the field it is wrong in."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def prompt_messages(
    record: dict,
    *,
    prompt_column: str | None = None,
    messages_column: str | None = None,
    system_prompt: str | None = None,
    answered: bool = False,
    prompt_columns=PROMPT_COLUMNS,
    messages_columns=MESSAGES_COLUMNS,
) -> list[dict]:
    """The record's prompt as checked chat messages (roles aliased, contents stripped).

    The messages column (named, or the first of `messages_columns` present) comes before the prompt column (named,
    or the first of `prompt_columns` present). A prompt column holds text, a chat (TRL's conversational prompt) or
    {"messages": [...]} (the `input` of OpenAI's preference format). `system_prompt` goes first where the chat has
    none. With `answered` (training files: an SFT chat ends in its answer) the trailing assistant turns are dropped.
    The chat must go [system], user, assistant, ... and end with the user's turn, no content empty."""
    messages_col = messages_column or next((c for c in messages_columns if c in record), None)
    prompt_col = prompt_column or next((c for c in prompt_columns if c in record), None)
    if messages_col and messages_col in record and record[messages_col] is not None:
        messages, field = parse_messages(record[messages_col], messages_col), messages_col
    elif prompt_col and prompt_col in record:
        value, field = record[prompt_col], prompt_col
        if value is None:  # an empty CSV field, a JSON null
            raise BadRow(prompt_col, "empty prompt")
        if isinstance(value, dict) and "messages" in value:
            messages, field = parse_messages(value["messages"], f"{prompt_col}.messages"), f"{prompt_col}.messages"
        elif isinstance(value, list):
            messages = parse_messages(value, prompt_col)
        elif isinstance(value, str):
            messages = [{"role": "user", "content": value}]
        else:
            raise BadRow(prompt_col, f"expected text, got {type(value).__name__}")
    else:
        wanted = messages_column or prompt_column
        raise BadRow(
            wanted or "prompt",
            f"missing column {wanted!r}"
            if wanted
            else f"no prompt column (looked for {', '.join([*prompt_columns, *messages_columns])}; "
            f"found {', '.join(map(str, record))})",
        )
    if answered:
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise BadRow(field, "a chat of assistant turns only: no prompt")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    check_chat(messages, field)
    return normalize_roles(messages)


def parse_messages(value, field: str) -> list[dict]:
    """A list of {role, content} messages (or its JSON text; ShareGPT's from/value too), roles aliased."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(field, "expected a list of {role, content} messages (or its JSON text)") from None
    if not isinstance(value, list) or not value:
        raise BadRow(field, "expected a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow(f"{field}[{i}]", "expected an object with role and content")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise BadRow(f"{field}[{i}]", "each message needs string `role` and `content`")
        out.append({"role": ROLE_ALIASES.get(role, role), "content": content})
    return out


def check_chat(messages: list[dict], field: str | None) -> None:
    """System first (optional), then user/assistant alternating, ending with the user's turn."""
    field = field or "messages"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRow(f"{field}[{i}].role", f"unknown role {m['role']!r}; use system, user or assistant")
        if not m["content"].strip():
            raise BadRow(f"{field}[{i}].content" if len(messages) > 1 else field, "empty prompt")
    if not turns:
        raise BadRow(field, "chat has only a system message; add a user turn")
    offset = len(messages) - len(turns)
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise BadRow(
                f"{field}[{i + offset}].role",
                f"invalid role order: expected {expected!r} at turn {i + offset}, got {m['role']!r} "
                "(chats go [system], user, assistant, user, ...)",
            )
    if turns[-1]["role"] != "user":
        raise BadRow(f"{field}[{len(messages) - 1}].role", "a chat must end with a user turn for the model to answer")


def normalize_roles(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]
