"""docker-compose.yml refers only to things that exist: images/builds, commands, env, volumes.

No Docker engine runs here, so the file is checked against the repo and the installed Airflow:
every `airflow ...` command parses with Airflow's own CLI parser, every `python -m` module and
`cgthub` command exists, every AIRFLOW__SECTION__KEY is a real Airflow option, every path in env
is something a volume or the Dockerfile puts there, and every ${VAR} is documented.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = (ROOT / "deploy" / ".env.example").read_text()
# Config sections whose options come from providers the image installs (Dockerfile extras), not this venv.
PROVIDER_SECTIONS = {"celery": "celery", "fab": "apache-airflow-providers-fab"}


def _commands(service: dict) -> list[list[str]]:
    command = service.get("command")
    if command is None:
        return []
    argv = command if isinstance(command, list) else shlex.split(command)
    if argv[:2] == ["bash", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def _dockerfile_targets() -> dict[str, Path]:
    """Container path -> repo path for every COPY in the Dockerfile (relative to its WORKDIR)."""
    workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE, re.M).group(1)
    targets = {}
    for sources, dest in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+(\S+)$", DOCKERFILE, re.M):
        for source in sources.split():
            base = workdir if dest in (".", "./") else str(Path(workdir) / dest.removeprefix("./"))
            targets[base if dest not in (".", "./") else f"{workdir}/{source}"] = ROOT / source
    return targets


def test_airflow_33_celery_stack_is_complete():
    commands = {name: _commands(s) for name, s in SERVICES.items()}
    roles = {" ".join(c[0][1:3]) for c in commands.values() if c and c[0][0] == "airflow"}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"} <= roles
    assert {"postgres", "redis", "mllp-listener"} <= set(SERVICES)
    assert SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.\d+$", DOCKERFILE, re.M)
    assert "celery" in re.search(r"apache-airflow\[([^\]]*)\]", DOCKERFILE).group(1)
    sandboxes = [n for n, s in SERVICES.items() if "sandbox" in n or n == "demo-feeder"]
    assert sandboxes and all(SERVICES[n].get("profiles") == ["sandbox"] for n in sandboxes)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_image_or_build_exists(name):
    service = SERVICES[name]
    assert "image" in service or "build" in service, name
    build = service.get("build")
    if build is not None:
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
    else:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), f"{name}: pin an image tag"


def test_dockerfile_copies_only_what_exists():
    for container, repo in _dockerfile_targets().items():
        assert repo.exists(), f"Dockerfile copies {repo.relative_to(ROOT)} (to {container}), which does not exist"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_commands_exist(name):
    from airflow.cli import cli_parser

    if "build" not in SERVICES[name]:  # a third-party image: its command is that image's own arguments
        return
    for argv in _commands(SERVICES[name]):
        if argv[0] == "airflow":
            if argv[1] == "celery":  # the celery provider is an image extra (checked above), not in this venv
                assert argv[2] in {"worker", "flower"}, argv
                continue
            if argv[1] == "users":  # the FAB auth manager's CLI: its provider is in the image, not this venv
                assert "apache-airflow-providers-fab" in DOCKERFILE and argv[2] == "create", argv
                continue
            try:
                namespace = cli_parser.get_parser().parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{name}: `{' '.join(argv)}` is not an airflow command")
            assert callable(namespace.func)
        elif argv[:2] == ["python", "-m"]:
            module = argv[2]
            assert importlib.util.find_spec(module), f"{name}: module {module} not found"
            if module == "cgthub.services":
                from cgthub.services import parser

                parser().parse_known_args(argv[3:])  # exits (fails the test) on a bad service or option
        elif argv[0] == "cgthub":
            done = subprocess.run(
                [str(Path(sys.executable).parent / "cgthub"), *argv[1:], "--help"], capture_output=True, text=True
            )
            assert done.returncode == 0, f"{name}: `{' '.join(argv)}`: {done.stderr[-500:]}"
        else:
            pytest.fail(f"{name}: unknown command {argv}")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_env_refers_to_real_options_paths_and_documented_variables(name):
    from airflow.configuration import retrieve_configuration_description

    options = retrieve_configuration_description(include_providers=True)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[name].get("volumes", []) if isinstance(v, str)}
    copied = _dockerfile_targets() if "build" in SERVICES[name] else {}
    for key, value in (SERVICES[name].get("environment") or {}).items():
        value = str(value)
        match = re.fullmatch(r"AIRFLOW__([A-Z_]+?)__([A-Z_]+)", key)
        if match:
            section, option = match.group(1).lower(), match.group(2).lower()
            if section in PROVIDER_SECTIONS:
                assert PROVIDER_SECTIONS[section] in DOCKERFILE, f"{key} needs the {section} provider in the image"
            else:
                assert option in options.get(section, {}).get("options", {}), f"{name}: {key} is no Airflow option"
        for variable in re.findall(r"\$\{(\w+)", value):
            assert re.search(rf"^{variable}=", ENV_EXAMPLE, re.M), f"{name}: ${{{variable}}} not in deploy/.env.example"
        if value.startswith("/opt/cgthub/"):
            owner = [t for t in [*mounted, *copied] if value == t or value.startswith(t.rstrip("/") + "/")]
            assert owner, f"{name}: {key}={value} is neither mounted nor copied into the image"
            for target in owner:
                repo = ROOT / mounted[target].removeprefix("./") if target in mounted else copied.get(target)
                if repo is not None and target in mounted and mounted[target].startswith("."):
                    assert (repo / Path(value).relative_to(target)).exists(), f"{name}: {value} missing in the repo"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_volumes_exist(name):
    declared = set(COMPOSE.get("volumes") or {})
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (ROOT / source).exists(), f"{name}: {source} does not exist in the repo"
        else:
            assert source in declared, f"{name}: named volume {source} is not declared"


def test_the_plugin_and_dags_reach_the_containers():
    targets = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["airflow-apiserver"]["volumes"]}
    env = SERVICES["airflow-apiserver"]["environment"]
    assert targets[env["AIRFLOW__CORE__DAGS_FOLDER"]] == "./dags"
    assert targets[env["AIRFLOW__CORE__PLUGINS_FOLDER"]] == "./plugins"
    assert (ROOT / "plugins" / "cgthub_plugin.py").is_file() and any((ROOT / "dags").glob("cgthub_*.py"))


def test_partner_connections_default_to_the_sandbox_services_on_their_ports():
    """Each connector's connection names a sandbox service of the compose file, on that sandbox's port."""
    from connectors.sandboxes import CONNECTIONS, FIXED_PORTS

    env = COMPOSE["x-airflow-common"]["environment"]
    for partner, (conn_id, _uri) in CONNECTIONS.items():
        value = env[f"AIRFLOW_CONN_{conn_id.upper()}"]
        default = re.fullmatch(r"\$\{\w+:-(.+)\}", value).group(1)
        parts = urlsplit(default)
        assert parts.hostname == f"{partner}-sandbox" and parts.hostname in SERVICES, value
        assert parts.port == FIXED_PORTS[partner], value
        assert "sandbox" in SERVICES[parts.hostname].get("profiles", []), parts.hostname
    listener = env["CGTHUB_MLLP_LISTENER"].split(":")
    assert listener[0] in SERVICES and f"{listener[1]}:{listener[1]}" in SERVICES[listener[0]]["ports"]


AIRFLOW_SERVICES = ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"]
AIRFLOW_SERVICES += ["airflow-triggerer", "airflow-worker"]
HUB_SERVICES = ["mllp-listener", "webhook-delivery", "courier-webhook"]


def _required_variable(value: str) -> str:
    """The .env variable a `${VAR:?message}` value must come from (compose refuses to start without it)."""
    match = re.fullmatch(r"\$\{(\w+):\?[^}]*\}", value)
    assert match, f"{value!r} is not read from .env as a required variable"
    return match.group(1)


def test_every_airflow_component_shares_one_jwt_secret_and_config_from_env():
    """Workers must verify the API server's task tokens: one secret, from .env, for all of them."""
    common = COMPOSE["x-airflow-common"]["environment"]
    for name in AIRFLOW_SERVICES:
        env = SERVICES[name]["environment"]
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
            assert env[key] == common[key], f"{name}: {key} differs from the other components'"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/"), name
    variable = _required_variable(common["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert re.search(rf"^{variable}=$", ENV_EXAMPLE, re.M), f"{variable} must be in .env.example, left empty"


def test_a_production_auth_manager_with_a_documented_first_login():
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    assert "apache-airflow-providers-fab" in DOCKERFILE
    init = SERVICES["airflow-init"]
    steps = [" ".join(argv[:3]) for argv in _commands(init)]
    assert steps[0] == "airflow db migrate" and "airflow users create" in steps and steps[-1] == "cgthub db upgrade"
    create = next(argv for argv in _commands(init) if argv[:3] == ["airflow", "users", "create"])
    options = dict(zip(create[3::2], create[4::2], strict=False))
    assert options["--role"] == "Admin"
    password = re.fullmatch(r"\$\$\{(\w+)\}", options["--password"]).group(1)
    assert _required_variable(init["environment"][password]) == "AIRFLOW_ADMIN_PASSWORD"
    assert re.search(r"^AIRFLOW_ADMIN_PASSWORD=$", ENV_EXAMPLE, re.M)
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "AIRFLOW_ADMIN_USERNAME" in readme and "AIRFLOW_ADMIN_PASSWORD" in readme and "8080" in readme


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(name):
    service = SERVICES[name]
    if name == "airflow-init":  # one-shot: the others wait for it to complete successfully
        assert service["restart"] == "no"
    else:
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"
    for dependency, condition in (service.get("depends_on") or {}).items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        expected = "service_completed_successfully" if dependency == "airflow-init" else "service_healthy"
        assert condition == {"condition": expected}, f"{name} -> {dependency}: {condition}"
    if name not in {"postgres", "redis", "statsd-exporter"}:
        assert {"postgres", "redis"} <= set(service.get("depends_on") or {}), f"{name} starts before its stores"


def test_dockerignore_keeps_the_venv_var_git_and_caches_out_of_the_build_context():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "var", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".env"} <= ignored
    copied = {source for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE, re.M)}
    for sources in copied:
        for source in sources.split():
            assert source.rstrip("/") not in ignored, f"the Dockerfile copies {source}, which .dockerignore drops"


def test_the_image_installs_with_airflows_constraints_for_its_own_version():
    version = re.search(r"^ARG AIRFLOW_VERSION=(\S+)", DOCKERFILE, re.M).group(1)
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)", DOCKERFILE, re.M).group(1)
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}", DOCKERFILE, re.M)
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in DOCKERFILE
    assert "--constraint" in DOCKERFILE
    pinned = re.search(r'"apache-airflow==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert version == pinned, "the image's Airflow is the one pyproject pins"
    assert python == "3.11"


def test_the_hubs_own_services_run_in_production_mode():
    for name in HUB_SERVICES:
        assert SERVICES[name]["environment"]["CGTHUB_ENV"] == "production", name
        assert "healthcheck" in SERVICES[name] and SERVICES[name].get("restart") == "always", name
    delivery = _commands(SERVICES["webhook-delivery"])[0]
    courier = _commands(SERVICES["courier-webhook"])[0]
    assert delivery[3] == "webhook-delivery" and courier[3] == "courier-webhook"
    secret = SERVICES["courier-webhook"]["environment"]["CGTHUB_COURIER_WEBHOOK_SECRET"]
    assert _required_variable(secret) == "CGTHUB_COURIER_WEBHOOK_SECRET"
    listener = _commands(SERVICES["mllp-listener"])[0]
    assert listener[listener.index("--metrics-port") + 1] in {
        p.split(":")[0] for p in SERVICES["mllp-listener"]["ports"]
    }


SECRET_WORDS = re.compile(r"KEY|SECRET|PASSWORD|TOKEN", re.I)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_secrets_come_only_from_env(name):
    """No password, key or secret is written in the compose file; credentials in URLs are .env variables."""
    for key, value in (SERVICES[name].get("environment") or {}).items():
        value = str(value)
        if SECRET_WORDS.search(key) and value and not key.startswith("AIRFLOW_CONN_"):
            assert value.startswith("${") and value.endswith("}"), f"{name}: {key} is written in the file"
            assert ":-" not in value or value.endswith(":-}"), f"{name}: {key} has a default"
        for userinfo in re.findall(r"://([^@/\s]*)@", value):
            password = userinfo.partition(":")[2]
            if key.startswith("AIRFLOW_CONN_"):  # a partner's URL from .env; unset, its sandbox's own test key
                assert re.fullmatch(r"\$\{AIRFLOW_CONN_\w+:-.+-sandbox:\d+.*\}", value), f"{name}: {key}"
            else:
                assert password == "" or re.fullmatch(r"\$\{\w+:\?[^}]*\}", password), f"{name}: {key} has a password"


def test_airflows_own_metrics_go_to_the_statsd_exporter():
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    exporter = env["AIRFLOW__METRICS__STATSD_HOST"]
    assert exporter in SERVICES and "statsd" in DOCKERFILE
    assert f"--statsd.listen-udp=:{env['AIRFLOW__METRICS__STATSD_PORT']}" in SERVICES[exporter]["command"]


def _compose_command() -> list[str] | None:
    """Docker's compose plugin, else Compose v1 (Debian's `docker-compose`): both validate the file."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """A compose that reads the file; Debian's docker-compose is installed where none is and allowed
    (root). A workstation without either skips; under CI=true that fails the run."""
    found = _compose_command()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "docker-compose"],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = _compose_command()
    if found is None:
        reason = "neither `docker compose` nor `docker-compose` is installed: `sudo apt-get install -y docker-compose`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _config(compose: list[str], file: Path, env: Path) -> subprocess.CompletedProcess[str]:
    command = [*compose, "--env-file", str(env), "--project-directory", str(ROOT), "-f", str(file), "config"]
    return subprocess.run([*command, "--quiet"], capture_output=True, text=True)


def test_docker_compose_accepts_the_file_and_refuses_a_broken_one(compose, tmp_path):
    env = tmp_path / ".env"
    env.write_text("".join(f"{v}=x\n" for v in re.findall(r"^(\w+)=", ENV_EXAMPLE, re.M)))
    done = _config(compose, ROOT / "docker-compose.yml", env)
    assert done.returncode == 0, done.stderr
    broken = tmp_path / "docker-compose.yml"  # what a typo in a healthcheck's dependency would do
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("service_healthy", "service_healty", 1))
    refused = _config(compose, broken, env)
    assert refused.returncode != 0 and "service_healty" in refused.stderr
