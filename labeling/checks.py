"""What `prefab check CONFIG` asks of labeling (registered under the entry point group `prefab.checks`): a config
whose run pushes pairs to people needs the labeling server answering."""

from labeling.launcher import lifecycle
from labeling.push import server_home
from pipeline.commands.check import Check
from pipeline.core.store import Run


def labeling_server(config) -> list[Check]:
    """The server the push stage would use answers its health check: for a run that pushed already, the server it
    pushed to, as push and pull use. A run without the push stage needs none."""
    if config.labeling is None or (config.stages is not None and "push" not in config.stages):
        return []
    info = lifecycle.status(server_home(Run(config.run)))
    where = info.get("url") or f"home {info.get('home')} (never started)"
    if info["healthy"]:
        return [Check("labeling server", where, "answers", "ok")]
    if info.get("external"):
        return [
            Check(
                "labeling server",
                where,
                "answers",
                "fail",
                "the Argilla at ARGILLA_API_URL does not answer",
                "start that server, or correct ARGILLA_API_URL and ARGILLA_API_KEY",
            )
        ]
    return [
        Check(
            "labeling server",
            where,
            "answers",
            "fail",
            "not running" if info.get("url") else "never started here",
            "prefab labeling up" + ("" if info.get("url") else " (for a trial: prefab labeling up --demo)"),
        )
    ]


checks = [labeling_server]
