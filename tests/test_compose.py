"""The container deployment: docker-compose.yml, the Dockerfile, Prometheus and Grafana files.

No Docker engine is needed: the compose file is validated by ``docker-compose config`` (Debian's
docker-compose package; skipped where it is missing) and its contract is read with PyYAML, with
every ``${VAR:-default}`` replaced by its default, i.e. the file as it behaves with no variables set.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "orch_sweeps.json"

RAY_SERVICES = ("ray-head", "ray-worker", "ray-gpu-worker", "retuner")
STORE = "s3://orch/results"
S3_SECRETS = ("s3_access_key", "s3_secret_key", "s3_credentials")
TOKEN_SECRET = "ray_auth_token"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What orch's driver exports through ray.util.metrics, as Prometheus sees it (Ray adds "ray_").
ORCH_METRICS = {"ray_orch_trials", "ray_orch_trial_results_total", "ray_orch_best_objective",
                "ray_orch_trials_planned"}

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
                       r"(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def with_defaults(value):
    """``value`` with compose's variables replaced by their defaults (unset variables: empty)."""
    if isinstance(value, dict):
        return {k: with_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("op") in (":-", "-"):
            return match.group("default")
        return ""

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return with_defaults(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each of the service's volumes."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.append((volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
        else:
            parts = volume.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            out.append((parts[0], parts[1], "ro" in mode.split(",")))
    return out


def published(port) -> tuple[str, str, str]:
    """(host address, host port, container port) of one ``ports:`` entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])
    parts = str(port).split("/")[0].split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


# -- docker-compose itself -------------------------------------------------------------------------


def _docker_compose(*args: str, token_file: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "COMPOSE_", "DOCKER_"))}
    env["ORCH_TOKEN_FILE"] = str(token_file)
    env["ORCH_SECRETS_DIR"] = str(token_file.parent)
    return subprocess.run(["docker-compose", "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "ray_auth_token"
    path.write_text("0123456789abcdef" * 4 + "\n")
    path.chmod(0o600)
    for name in S3_SECRETS:
        (tmp_path / name).write_text("x")
    return path


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (Debian's docker-compose package; .ci/run "
                           "installs it where apt-get and root are available)")
def test_docker_compose_config_accepts_the_file(token_file):
    done = _docker_compose("config", "-q", token_file=token_file)
    assert done.returncode == 0, done.stderr

    done = _docker_compose("--profile", "gpu", "--profile", "grafana", "config", token_file=token_file)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == {*RAY_SERVICES, "prometheus", "grafana", "minio", "minio-bucket"}
    assert resolved["secrets"][TOKEN_SECRET]["file"] == str(token_file)
    head_ports = [published(p) for p in resolved["services"]["ray-head"]["ports"]]
    assert head_ports == [("127.0.0.1", "8265", "8265")]


# -- the compose file's contract -------------------------------------------------------------------


def test_only_the_dashboard_and_grafana_are_published_and_on_loopback(services):
    publishing = {name for name, svc in services.items() if svc.get("ports")}
    assert publishing == {"ray-head", "grafana"}
    assert [published(p) for p in services["ray-head"]["ports"]] == [("127.0.0.1", "8265", "8265")]
    assert [published(p) for p in services["grafana"]["ports"]] == [("127.0.0.1", "3000", "3000")]
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name} would bypass the compose network"


def test_every_ray_service_presents_the_token_from_the_secret(compose, services):
    secret = compose["secrets"][TOKEN_SECRET]
    assert set(secret) == {"file"}
    assert secret["file"] == "./deploy/secrets/ray_auth_token"
    for name in RAY_SERVICES:
        svc = services[name]
        sources = [s if isinstance(s, str) else s["source"] for s in svc.get("secrets") or []]
        assert TOKEN_SECRET in sources, name
        env = environment(svc)
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN_PATH") == f"/run/secrets/{TOKEN_SECRET}", name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: a token in the environment"


def test_no_token_is_written_into_the_compose_file_or_the_image():
    texts = {path.name: path.read_text() for path in (COMPOSE, DOCKERFILE)}
    for name, text in texts.items():
        assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), f"{name} holds a hex string like a token"
        assert not re.search(r"RAY_AUTH_TOKEN\s*[:=]", text), f"{name} sets RAY_AUTH_TOKEN"
    token = ROOT / "deploy" / "secrets" / "ray_auth_token"
    if token.is_file() and token.read_text().strip():
        for name, text in texts.items():
            assert token.read_text().strip() not in text, name
    ignored = DOCKERIGNORE.read_text().split()
    assert "deploy/secrets" in ignored
    assert not re.search(r"^\s*(COPY|ADD)\b.*secrets", DOCKERFILE.read_text(), re.MULTILINE)


def test_every_ray_service_keeps_the_store_in_minio_and_shares_no_volume(compose, services):
    assert "orch-shared" not in (compose.get("volumes") or {})
    for name in RAY_SERVICES:
        env = environment(services[name])
        assert env.get("ORCH_STORE") == STORE, name
        assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000", name
        assert env.get("AWS_SHARED_CREDENTIALS_FILE") == "/run/secrets/s3_credentials", name
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), f"{name}: keys in the environment"
        sources = [s if isinstance(s, str) else s["source"] for s in services[name].get("secrets") or []]
        assert "s3_credentials" in sources, name
        assert not [m for m in mounts(services[name]) if not m[0].startswith(("ray-head-tmp", "./"))], name
    minio = services["minio"]
    assert not minio.get("ports"), "MinIO is reachable on the compose network only"
    assert environment(minio)["MINIO_ROOT_USER_FILE"] == "/run/secrets/s3_access_key"
    assert environment(minio)["MINIO_ROOT_PASSWORD_FILE"] == "/run/secrets/s3_secret_key"
    bucket = services["minio-bucket"]
    assert environment(bucket)["ORCH_STORE"] == STORE  # the bucket it creates is the store's
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["ray-head"]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    for name in S3_SECRETS:
        assert compose["secrets"][name]["file"] == f"./deploy/secrets/{name}"


def test_make_token_writes_minios_keys_and_a_credentials_file_boto3_reads(tmp_path):
    import configparser

    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy2(ROOT / "deploy" / "make-token", deploy / "make-token")
    env = {**os.environ, "ORCH_PYTHON": sys.executable}
    first = subprocess.run([str(deploy / "make-token")], capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    secrets_dir = deploy / "secrets"
    key, secret = ((secrets_dir / n).read_text() for n in ("s3_access_key", "s3_secret_key"))
    for name in ("ray_auth_token", *S3_SECRETS):
        assert (secrets_dir / name).stat().st_mode & 0o077 == 0, name
    ini = configparser.ConfigParser()
    ini.read(secrets_dir / "s3_credentials")
    assert ini["default"]["aws_access_key_id"] == key and ini["default"]["aws_secret_access_key"] == secret
    boto3 = pytest.importorskip("boto3")
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(k)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(secrets_dir / "s3_credentials"))
        creds = boto3.Session().get_credentials()
        assert (creds.access_key, creds.secret_key) == (key, secret)
    again = subprocess.run([str(deploy / "make-token")], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and again.stdout.count("kept") == 4  # nothing replaced
    assert (secrets_dir / "s3_access_key").read_text() == key


def test_prometheus_and_grafana_read_the_heads_ray_directory(compose, services):
    assert "ray-head-tmp" in compose["volumes"]
    assert ("ray-head-tmp", "/tmp/ray", False) in mounts(services["ray-head"])
    for name in ("prometheus", "grafana"):
        assert ("ray-head-tmp", "/tmp/ray", True) in mounts(services[name]), name
    prometheus_yml = ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", True)
    assert prometheus_yml in mounts(services["prometheus"])


def test_gpu_worker_is_a_profile_with_an_nvidia_reservation(services):
    gpu = services["ray-gpu-worker"]
    assert gpu.get("profiles") == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert environment(gpu).get("ORCH_NUM_GPUS") == "1"
    index = gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert index.startswith("https://download.pytorch.org/whl/cu"), index
    assert gpu["image"] != services["ray-head"]["image"]
    assert services["grafana"].get("profiles") == ["grafana"]
    for name, svc in services.items():
        if name not in ("ray-gpu-worker", "grafana"):
            assert not svc.get("profiles"), f"{name} should start by default"


def test_cpu_worker_scales(services):
    worker = services["ray-worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"ray-worker sets {key}: `--scale ray-worker=N` would clash"
    assert environment(worker).get("ORCH_HEAD_ADDRESS") == "ray-head:6379"


def test_nodes_wait_for_a_healthy_head(services):
    assert services["ray-head"]["healthcheck"]["test"]
    for name in ("ray-worker", "ray-gpu-worker", "retuner"):
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy", name


def test_each_image_tag_is_built_by_one_service(services):
    builders: dict[str, list[str]] = {}
    for name, svc in services.items():
        if "build" in svc:
            builders.setdefault(svc["image"], []).append(name)
    assert all(len(names) == 1 for names in builders.values()), builders
    for name, svc in services.items():
        if svc.get("image") in builders and "build" not in svc:
            assert svc.get("pull_policy") == "never", f"{name} would pull {svc['image']} from a registry"


def test_service_commands_are_executable_deploy_scripts(services):
    for name in RAY_SERVICES:
        argv = command(services[name])
        assert argv and argv[0].startswith("deploy/"), f"{name}: {argv}"
        script = ROOT / argv[0]
        assert script.is_file(), f"{name}: {argv[0]} is missing"
        assert os.access(script, os.X_OK), f"{name}: {argv[0]} is not executable"
        assert script.read_text().startswith("#!"), f"{name}: {argv[0]} has no #! line"
    assert (ROOT / "deploy" / "make-token").is_file()
    assert os.access(ROOT / "deploy" / "make-token", os.X_OK)


def test_dockerfile_installs_cpu_torch_by_default_then_orch():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    args = dict(line.split(None, 1)[1].split("=", 1) for line in lines if line.startswith("ARG ") and "=" in line)
    assert args.get("TORCH_INDEX_URL") == CPU_INDEX
    torch_at = text.index('--index-url "${TORCH_INDEX_URL}" torch')
    orch_at = text.index("pip install .")
    assert torch_at < orch_at
    assert re.search(r"^WORKDIR /opt/orch$", text, re.MULTILINE)
    ignored = DOCKERIGNORE.read_text().split()
    for entry in (".git", "results", "bench/out", "**/__pycache__", "**/*.egg-info", ".venv", "venv"):
        assert entry in ignored, entry


# -- Prometheus and Grafana ------------------------------------------------------------------------


def test_prometheus_scrapes_ray_through_its_discovery_file():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "10s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_grafana_provisioning_matches_the_compose_mounts(services):
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert (prometheus["name"], prometheus["uid"], prometheus["type"]) == ("Prometheus", "prometheus", "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"

    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    paths = {p["name"]: p["options"]["path"] for p in providers}
    assert paths["Ray"] == "/tmp/ray/session_latest/metrics/grafana/dashboards"
    grafana_mounts = {target: source for source, target, _ in mounts(services["grafana"])}
    assert grafana_mounts[paths["orch"]] == "./deploy/grafana/dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    env = environment(services["grafana"])
    assert env["GF_SECURITY_ALLOW_EMBEDDING"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_dashboard_queries_only_the_metrics_orch_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"study", "sweep_id"} <= set(variables)
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"] for v in variables.values()]
    used = {name for q in queries for name in re.findall(r"\bray_orch_[a-z_]+\b", q)}
    assert used <= ORCH_METRICS, used - ORCH_METRICS
    assert used == ORCH_METRICS
    for q in queries:
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if "ray_orch_" in target["expr"]:
                assert 'study=~"$study"' in target["expr"] and 'sweep_id=~"$sweep_id"' in target["expr"], target["expr"]
    sources = [node["datasource"] for node in _walk(dashboard) if isinstance(node.get("datasource"), dict)]
    assert sources and all(s == {"type": "prometheus", "uid": "prometheus"} for s in sources)
