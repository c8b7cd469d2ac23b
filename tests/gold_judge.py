"""A judge whose behaviour the test sets, served by the OpenAI-compatible test server (real client, real HTTP).

For each gold pair it holds a belief (which response is better), right with a set probability. Its confidence
`w` (0..1) shows as the pointwise margin (the believed-better response scores 3 + 2w, the other 3 - 2w, on one
1..5 aspect) and is informative or not: informative, the belief is right with probability rising with w
(mean `accuracy`); not, with probability `accuracy` whatever w. The pairwise judge names the believed-better
response, except that with probability `bias` it names A whatever it believes. Everything is drawn from a
hash of the prompt, so a pair gets the same answers on every call and in every run.
"""

import hashlib
import json
import re

ASPECT = [{"name": "quality", "min": 1, "max": 5}]


def uniform(*parts) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:15], 16) / 16**15


def gold_pairs(n: int, tag: str = "g") -> list[dict]:
    """n gold pairs with distinct prompts; chosen is the better response; lengths vary on both sides."""
    return [
        {
            "prompt": f"Question {tag}{k}: what is {k} plus {k}?",
            "chosen": f"{2 * k}." + " Because adding it twice doubles it." * (k % 3),
            "rejected": f"{2 * k + 1}, I believe." + " It is a well known sum." * ((k + 1) % 3),
        }
        for k in range(n)
    ]


class ControlledJudge:
    def __init__(
        self, pairs: list[dict], *, accuracy: float, informative: bool = True, bias: float = 0.0, seed: int = 0
    ):
        self.accuracy, self.informative, self.bias, self.seed = accuracy, informative, bias, seed
        self.side = {}  # response text -> (prompt, is the gold-chosen one)
        for p in pairs:
            self.side[p["chosen"]] = (p["prompt"], True)
            self.side[p["rejected"]] = (p["prompt"], False)

    def confidence(self, prompt: str) -> float:
        return uniform(self.seed, prompt, "w")

    def right(self, prompt: str) -> bool:
        """Whether its belief on this pair matches the people's."""
        w = self.confidence(prompt)
        slope = 2 * min(self.accuracy - 0.5, 1 - self.accuracy)
        p = self.accuracy + (w - 0.5) * slope if self.informative else self.accuracy
        return uniform(self.seed, prompt, "v") < p

    def believes_better(self, text: str) -> bool:
        prompt, is_chosen = self.side[text]
        return is_chosen == self.right(prompt)

    def __call__(self, request: dict) -> str:
        user = request["messages"][-1]["content"]
        prompt = re.search(r"\[user\]\n(.*?)\n\n## ", user, re.S).group(1)
        if "## Response to rate" in user:
            text = user.split("## Response to rate\n\n", 1)[1].strip()
            w = self.confidence(prompt)
            score = 3 + 2 * w if self.believes_better(text) else 3 - 2 * w
            return json.dumps({"quality": {"rationale": "as set by the test", "score": round(score, 4)}})
        a = user.split("## Response A\n\n", 1)[1].split("\n\n## Response B\n\n", 1)[0].strip()
        winner = "A" if self.believes_better(a) else "B"
        if uniform(self.seed, prompt, a, "bias") < self.bias:
            winner = "A"
        return json.dumps({"rationale": "as set by the test", "winner": winner})


def judge_section(server, pairwise: bool = False) -> dict:
    return {
        "judges": [
            {
                "name": "ctl",
                "backend": "openai",
                "model": "ctl-model",
                "base_url": server.url,
                "max_retries": 0,
                "timeout": 10,
                "concurrency": 32,
            }
        ],
        "aspects": ASPECT,
        "pairwise": pairwise,
        "structured_output": False,
        "parse_retries": 0,
    }


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
