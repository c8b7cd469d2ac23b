"""Model stages on a local Ray instance on CPU (pipeline/models/ray_cluster.py): `prefab run` with `ray:` on the
generator, the judge and the embed section gives the candidates, judgments and vectors of the same run made in
this process."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.core.config import ModelSpec
from pipeline.core.store import open_run
from pipeline.models import llm_transformers, ray_cluster
from pipeline.stages import embed

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three fruits.",
    "Explain in a few words why the sky is blue, as if to a child.",
]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of 2 CPUs in this process: `address: local` uses it."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, logging_level="warning")
    yield
    ray_cluster.release()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The run made in this process, to compare with, with torch at one thread as each one-CPU replica has it
    (the same float sums by construction; at 2 threads the answers were the same too, only slower on 2 shared cores)."""
    import torch
    from click.testing import CliRunner

    from pipeline.commands.cli import cli

    tmp_path = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["run", str(write_config(tmp_path, "local"))], catch_exceptions=False)
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return open_run(tmp_path / "local")


def write_config(tmp_path: Path, name: str, ray: dict | None = None) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    generator = {
        "name": "smollm2",
        "model": "embedded:smollm2",
        "temperatures": [0, 1.0],
        "max_tokens": 12,
        "batch_size": 3,
        "device": "cpu",
    }
    judge = {"name": "judge", "model": "embedded:smollm2", "batch_size": 4, "device": "cpu"}
    on_ray = {"ray": ray} if ray else {}
    config = {
        "run": str(tmp_path / name),
        "stages": ["ingest", "generate", "judge", "embed"],
        "ingest": {"paths": [str(prompts)]},
        "generate": {"generators": [{**generator, **on_ray}]},
        "judge": {
            "judges": [{**judge, **on_ray}],
            "scoring": "logprobs",
            "aspects": [{"name": "helpfulness"}],
            "pairwise": False,
        },
        "embed": {"batch_size": 4, "device": "cpu", **on_ray},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def assert_same_run(local, on_ray) -> None:
    """The same candidates and judgments (latency aside), and vectors within 1e-5."""
    want = local.read("candidates").drop("latency_s").sort("candidate_id")
    got = on_ray.read("candidates").drop("latency_s").sort("candidate_id")
    assert want.height == 8 and want["error"].null_count() == 8 and want["text"].n_unique() > 4
    assert got.equals(want)

    want, got = (r.read("judgments").sort("candidate_id") for r in (local, on_ray))
    assert want.height == 8 and want["overall"].null_count() == 0
    assert got.equals(want)

    want, got = (r.read("embeddings").sort("id") for r in (local, on_ray))
    assert got["id"].to_list() == want["id"].to_list() and want.height == 12
    np.testing.assert_allclose(np.array(got["vector"].to_list()), np.array(want["vector"].to_list()), atol=1e-5)
    scores = [r.read("candidate_scores").sort("candidate_id") for r in (local, on_ray)]
    np.testing.assert_allclose(scores[1]["relevance"].to_numpy(), scores[0]["relevance"].to_numpy(), atol=1e-5)


def test_generate_judge_and_embed_on_ray_equal_a_local_run(local_run, local_ray, prefab, tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # on Ray the driver makes batches, and generates and encodes nothing itself
        m.setattr(llm_transformers, "_generate_batch", lambda *a: pytest.fail("generated in the driver"))
        m.setattr(embed, "_load_model", lambda *a: pytest.fail("embedding model loaded in the driver"))
        result = prefab("run", write_config(tmp_path, "on_ray", {"address": "local", "replicas": 2, "num_cpus": 1}))
    assert result.exit_code == 0, result.output
    assert len(ray_cluster._pool["actors"]) == 2  # the generator's replicas served the judge of the same model too
    assert_same_run(local_run, open_run(tmp_path / "on_ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEEN_BY_THE_CLUSTER = """
import json, ray
from ray._private import state
ray.init(address=ADDRESS, logging_level="error")
print(json.dumps({
    "jobs": [{"job_id": j["JobID"], "driver_pid": j["DriverPid"]} for j in state.jobs()],
    "actors": [{"job_id": a["JobID"], "class_name": a["ActorClassName"], "node_id": a["Address"]["NodeID"]}
               for a in state.actors().values()],
    "nodes": [n["NodeID"] for n in state.nodes()],
}))
"""


def test_a_cluster_that_ray_start_made_is_joined_at_its_address(local_run, tmp_path):
    """docs/scale.md's set-up: `ray start --head` (with token authentication), then `prefab run` in another process
    joins it at HOST:PORT, holding the cluster's token. The cluster itself is asked afterwards: the run's process
    is one of its jobs, whose replicas were actors on its node (a run that fell back to a Ray of its own would give
    the same tables)."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp = tempfile.mkdtemp(prefix="ray")  # Ray's sockets live here: a short path (a socket path holds 107 bytes)
    head = subprocess.Popen(
        [
            Path(sys.executable).with_name("ray"),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--ray-client-server-port",
            str(free_port()),
            "--num-cpus",
            "2",
            "--object-store-memory",
            str(200 * 2**20),
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        config = write_config(tmp_path, "cluster", {"address": f"127.0.0.1:{port}", "replicas": 2, "num_cpus": 1})
        run = subprocess.Popen(
            [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err
        asked = subprocess.run(
            [sys.executable, "-c", SEEN_BY_THE_CLUSTER.replace("ADDRESS", repr(f"127.0.0.1:{port}"))],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert asked.returncode == 0, asked.stderr
        seen = json.loads(asked.stdout.strip().splitlines()[-1])
    finally:
        head.terminate()  # ray start --block stops what it started on SIGTERM
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    [job] = [j["job_id"] for j in seen["jobs"] if int(j["driver_pid"]) == run.pid] or [None]
    assert job is not None, seen["jobs"]  # the run was a driver of this cluster
    replicas = [a for a in seen["actors"] if a["job_id"] == job and a["class_name"] == "Replica"]
    assert len(replicas) >= 2 and {a["node_id"] for a in replicas} <= set(seen["nodes"]), seen
    assert_same_run(local_run, open_run(tmp_path / "cluster"))


def test_more_gpus_than_the_cluster_has_is_a_config_error(local_ray, prefab, tmp_path):
    result = prefab("run", write_config(tmp_path, "gpus", {"address": "local", "replicas": 2, "num_gpus": 1}))
    assert result.exit_code == 2
    assert "2 replicas × num_gpus 1 need 2 GPUs, and the Ray cluster has 0" in result.output
    assert "lower ray.replicas or ray.num_gpus" in result.output


def test_an_unreachable_cluster_fails_before_any_work_naming_the_address(tmp_path):
    """In a fresh process (this one has joined a Ray already), against a port where nothing listens."""
    port = free_port()
    config = write_config(tmp_path, "away", {"address": f"127.0.0.1:{port}"})
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.cli", "run", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert (
        f"no Ray cluster answers at ray.address '127.0.0.1:{port}'" in done.stderr and "ray start --head" in done.stderr
    )
    assert open_run(tmp_path / "away").read_or_empty("candidates").is_empty()


def test_ray_is_a_setting_of_the_transformers_backend():
    with pytest.raises(ValidationError, match="`ray` is a setting of the transformers backend"):
        ModelSpec(backend="openai", model="some-model", base_url="http://localhost:8000/v1", ray={"replicas": 2})
    with pytest.raises(ValidationError, match="replicas"):
        ModelSpec(ray={"replicas": 0})
