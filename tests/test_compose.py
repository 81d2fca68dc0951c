"""docker-compose.yml refers only to things that exist: images/builds, commands, env, volumes.

No Docker engine runs here, so the file is checked against the repo and the installed Airflow:
every `airflow ...` command parses with Airflow's own CLI parser, every `python -m` module and
`cgthub` command exists, every AIRFLOW__SECTION__KEY is a real Airflow option, every path in env
is something a volume or the Dockerfile puts there, and every ${VAR} is documented.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
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
PROVIDER_SECTIONS = {"celery": "celery"}


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
    assert re.search(r"FROM apache/airflow:3\.3\.\d+", DOCKERFILE)
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

    for argv in _commands(SERVICES[name]):
        if argv[0] == "airflow":
            if argv[1] == "celery":  # the celery provider is an image extra (checked above), not in this venv
                assert argv[2] in {"worker", "flower"}, argv
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
