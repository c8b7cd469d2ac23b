"""The transformers backend: an in-process causal LM (a local checkpoint, or embedded:smollm2), loaded once per
process, batched by prompt length with left padding, on GPU when present.

Each row samples with its own seeded generator (Gumbel-max over the temperature/top-p adjusted logits), so a
request's answer depends on its seed, not on its batch mates; temperature 0 is greedy. `response_format` is
not enforced (judges ask for JSON in the prompt instead: json_schema is False). With `ray:` on the model the
same batches go to replicas on a Ray cluster (pipeline/models/ray_cluster.py).
"""

import math
import time

from pipeline.core.errors import ModelError
from pipeline.models.backends import DEFAULT_MAX_TOKENS, Request, Result
from pipeline.models.checkpoints import identity, load_tokenizer
from pipeline.models.embedded import resolve_llm
from pipeline.models.ray_cluster import connect, replica_device, run_batches


class TransformersBackend:
    """The backend (pipeline/models/backends.py): `backend: transformers` in a model's config (the default)."""

    fields = frozenset({"batch_size", "device", "ray"})
    json_schema = False
    top_logprobs = (
        100  # it holds every logit: logprob judges look deeper, so a small judge whose top 20 has no digit still scores
    )

    def check(self, spec) -> None:
        resolve_llm(spec.model)
        if spec.ray is not None:
            connect(spec.ray)  # an unreachable cluster fails here, before any work

    def run(self, spec, requests: list[Request], finish) -> None:
        if spec.ray is not None:
            return self._run_on_ray(spec, requests, finish)
        loaded = load_model(spec.model, spec.device)
        ids, batches = make_batches(loaded[1], requests, spec.batch_size)
        for batch in batches:
            for j, result in zip(
                batch, answer_batch(loaded, [ids[j] for j in batch], [requests[j] for j in batch]), strict=True
            ):
                finish(j, result)

    def _run_on_ray(self, spec, requests: list[Request], finish) -> None:
        """The local run's batches, made here with the model's tokenizer and sent whole to the replicas."""
        ids, batches = make_batches(load_tokenizer(spec.model, hint=TOKENIZER_HINT), requests, spec.batch_size)

        def done(k: int, results: list[Result]) -> None:
            for j, result in zip(batches[k], results, strict=True):
                finish(j, result)

        run_batches(
            spec.ray,
            load_model,
            (spec.model, replica_device(spec.ray, spec.device)),
            answer_batch,
            [([ids[j] for j in batch], [requests[j] for j in batch]) for batch in batches],
            done,
            stamp=identity(resolve_llm(spec.model)),
        )


def make_batches(tokenizer, requests: list[Request], batch_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt token ids, batches of request indices): like lengths together, so little padding and few rows wait
    for a long neighbour. A run on Ray sends these same batches, so greedy rows see the same padding."""
    ids = chat_token_ids(tokenizer, [r.messages for r in requests])
    order = sorted(range(len(requests)), key=lambda j: (requests[j].max_tokens or DEFAULT_MAX_TOKENS, len(ids[j])))
    return ids, [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def answer_batch(loaded: tuple, ids: list[list[int]], requests: list[Request]) -> list[Result]:
    """One batch on a loaded (model, tokenizer, device); each row's latency is the batch's time shared by its rows."""
    import torch  # start-up: torch

    model, tokenizer, device = loaded
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            outputs = _generate_batch(model, tokenizer, device, ids, requests)
    except torch.OutOfMemoryError as e:
        raise ModelError(f"out of memory generating a batch of {len(ids)} on {device}", hint="lower batch_size") from e
    latency = round((time.perf_counter() - started) / len(ids), 4)
    return [Result(**out, latency_s=latency) for out in outputs]


def chat_token_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """The prompt tokens a chat model is given: its chat template, ending where the assistant's answer starts."""
    prompts = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


TOKENIZER_HINT = "set `tokenizer:` to a local model directory (one holding tokenizer.json), or embedded:smollm2"

_LOADED: dict[tuple[str, str, str], tuple[str | None, tuple]] = {}  # (path, device, head) -> (its fingerprint, loaded)


def load_model(name: str, device: str | None = None, head: str = "AutoModelForCausalLM"):
    """(model, tokenizer, device), loaded once per process, device and head (transformers' Auto class: a reward
    model is an AutoModelForSequenceClassification), and again where a local checkpoint was retrained since."""
    import torch  # start-up: torch

    path = resolve_llm(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key, stamp = (path, device, head), identity(path)
    if key not in _LOADED or _LOADED[key][0] != stamp:
        import transformers  # start-up: transformers
        from transformers import AutoTokenizer  # start-up: transformers

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model = getattr(transformers, head).from_pretrained(path, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise ModelError(
                f"could not load model {name!r} from {path}: {e}",
                hint="pass a directory holding config.json and weights, or embedded:smollm2",
            ) from e
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _LOADED[key] = (stamp, (model, tokenizer, device))
    return _LOADED[key][1]


def _generate_batch(model, tokenizer, device, ids: list[list[int]], requests: list[Request]) -> list[dict]:
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList  # start-up: transformers

    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
    width = enc["input_ids"].shape[1]
    max_tokens = [r.max_tokens or DEFAULT_MAX_TOKENS for r in requests]
    stops = [r.stop or [] for r in requests]
    want_logprobs = any(r.logprobs for r in requests)
    stopper = _RowStop(tokenizer, width, max_tokens, stops)
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(max_tokens),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=model.generation_config.bos_token_id,
        return_dict_in_generate=True,
        output_logits=want_logprobs,
    )
    out = model.generate(
        **enc,
        generation_config=config,
        logits_processor=LogitsProcessorList([_RowSampler(requests, device)]),
        stopping_criteria=StoppingCriteriaList([stopper]),
    )
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    results = []
    for row, request in enumerate(requests):
        generated = out.sequences[row, width:].tolist()
        n = min(len(generated), max_tokens[row], stopper.done_at[row] or len(generated))
        finish = "length"
        for k, token in enumerate(generated[:n]):
            if token in eos_ids:
                n, finish = k + 1, "stop"
                break
        text = tokenizer.decode(generated[:n], skip_special_tokens=True)
        for stop in stops[row]:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        result = {"text": text, "finish_reason": finish, "prompt_tokens": len(ids[row]), "completion_tokens": n}
        if request.logprobs:
            result["logprobs"] = _logprobs(tokenizer, out.logits, row, generated[:n], request.top_logprobs or 0)
        results.append(result)
    return results


def _logprobs(tokenizer, logits, row: int, tokens: list[int], top: int) -> list[dict]:
    import torch  # start-up: torch

    out = []
    for step, token in enumerate(tokens):
        logp = torch.log_softmax(logits[step][row].float(), dim=-1)
        entry = {"token": tokenizer.decode([token]), "logprob": float(logp[token]), "top_logprobs": []}
        if top:
            values, indices = logp.topk(top)
            entry["top_logprobs"] = [
                {"token": tokenizer.decode([i]), "logprob": float(v)}
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
        out.append(entry)
    return out


class _RowSampler:
    """Per-row sampling as a logits processor under greedy decoding: temperature, top-p, then Gumbel noise
    from the row's own seeded generator, so argmax draws from the row's distribution. Temperature 0 = greedy."""

    def __init__(self, requests: list[Request], device: str):
        import torch  # start-up: torch

        temps = [1.0 if r.temperature is None else float(r.temperature) for r in requests]
        self.rows = [i for i, t in enumerate(temps) if t > 0]
        self.temps = torch.tensor([temps[i] for i in self.rows], device=device).unsqueeze(1)
        self.top_p = torch.tensor([float(requests[i].top_p or 1.0) for i in self.rows], device=device).unsqueeze(1)
        self.generators = []
        for i in self.rows:
            seed = requests[i].seed
            g = torch.Generator(device=device)
            g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
            self.generators.append(g)

    def __call__(self, input_ids, scores):
        import torch  # start-up: torch

        if not self.rows:
            return scores
        logits = scores[self.rows].float() / self.temps
        if bool((self.top_p < 1).any()):
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = (cum - sorted_logits.softmax(dim=-1)) > self.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), -math.inf)
        noise = torch.stack([torch.rand(logits.shape[1], generator=g, device=logits.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-20, 1.0 - 1e-7)))
        scores = scores.clone()
        scores[self.rows] = (logits + gumbel).to(scores.dtype)
        return scores


class _RowStop:
    """Stops each row at its own max_tokens or stop string; remembers when (generation pads finished rows)."""

    def __init__(self, tokenizer, width: int, max_tokens: list[int], stops: list[list[str]]):
        self.tokenizer, self.width, self.max_tokens, self.stops = tokenizer, width, max_tokens, stops
        self.done_at: list[int | None] = [None] * len(max_tokens)
        self.tail = max((len(s) for row in stops for s in row), default=0) + 8

    def __call__(self, input_ids, scores, **kwargs):
        import torch  # start-up: torch

        n = input_ids.shape[1] - self.width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if self.done_at[row] is not None:
                done[row] = True
                continue
            hit = n >= self.max_tokens[row]
            if not hit and self.stops[row]:
                tail = self.tokenizer.decode(
                    input_ids[row, self.width :][-self.tail :].tolist(), skip_special_tokens=True
                )
                hit = any(s in tail for s in self.stops[row])
            if hit:
                self.done_at[row] = n
                done[row] = True
        return done


backend = TransformersBackend()  # registered under the prefab.backends entry point (pyproject.toml)
