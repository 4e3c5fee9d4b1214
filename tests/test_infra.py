"""The infrastructure files: they parse, publish nothing beyond 127.0.0.1, hold no secret, and their
commands use flags and parameters that the code really accepts."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_compose_publishes_ports_on_loopback_only_and_takes_credentials_from_the_environment():
    compose = load_all(ROOT / "infra" / "compose.yaml")[0]
    ports = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    text = (ROOT / "infra" / "compose.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY: ${AWS_SECRET_ACCESS_KEY" in text


def test_kubernetes_manifests_parse_and_read_credentials_from_a_secret():
    kinds = []
    for path in sorted((ROOT / "infra" / "k8s").glob("*.yaml")):
        for doc in load_all(path):
            kinds.append(doc["kind"])
            assert "AWS_SECRET_ACCESS_KEY" not in yaml.safe_dump(doc), path
    assert {"Deployment", "Service", "PyTorchJob"} <= set(kinds)


def test_the_pytorchjob_command_is_a_valid_cxr_train_command_line():
    from cxr.learn.config import TrainConfig

    [job] = load_all(ROOT / "infra" / "k8s" / "pytorchjob.yaml")
    [container] = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["torchrun", "-m", "cxr.learn.train"]
    config = TrainConfig.from_args(command[3:])
    assert config.model == "densenet121" and config.resume and config.register == "cxr-classifier"
    assert config.batches(world_size=16, cuda=True) == (64, 1024)  # 2 nodes x 8 GPUs share the global batch


def test_prefect_yaml_deploys_the_retrain_flow_with_parameters_it_takes():
    from flows.retrain import retrain

    spec = load_all(ROOT / "prefect.yaml")[0]
    [deployment] = spec["deployments"]
    path, name = deployment["entrypoint"].split(":")
    assert (ROOT / path).exists() and name == "retrain"
    accepted = set(inspect.signature(retrain.fn).parameters)
    assert set(deployment["parameters"]) <= accepted


def test_prefect_yaml_states_the_same_defaults_as_cxr_deploy():
    from flows.deploy import DEFAULTS, ENTRYPOINT

    [deployment] = load_all(ROOT / "prefect.yaml")[0]["deployments"]
    assert deployment["entrypoint"] == ENTRYPOINT and deployment["name"] == DEFAULTS.name
    assert deployment["work_pool"]["name"] == DEFAULTS.pool
    assert deployment["schedules"] == [{"cron": DEFAULTS.cron, "timezone": DEFAULTS.timezone}]
    parameters = {k: v for k, v in deployment["parameters"].items() if k not in ("source", "workdir")}
    assert parameters == DEFAULTS.parameters()
