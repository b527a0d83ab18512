"""Offline checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml and deploy/helm.

There is no Docker engine and no Kubernetes cluster here, so nothing is started. Instead: the compose file is
validated against the Compose Specification's JSON schema (the copy check-jsonschema ships), every Helm value is
checked against the keys and types the community Locust chart documents, and the master's and workers' commands
go through Locust's real argument parser with this project's options registered, then through the project's own
option checks.
"""

from __future__ import annotations

from locust.argument_parser import get_parser

import copy
import fnmatch
import importlib.resources
import json
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

import locust_milvus.config.options  # noqa: F401  (registers the project's options with Locust's parser)
from locust_milvus.config.load import settings_from

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HELM_VALUES = ROOT / "deploy" / "helm" / "locust-values.yaml"
DEPLOY_README = ROOT / "deploy" / "README.md"
RELEASE = "locust-milvus"  # the Locust release name deploy/README.md installs: the chart's fullname, the master's host
MILVUS_GRPC_PORT = 19530


# --- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_locust_environment(monkeypatch):
    # Locust's parser reads LOCUST_* variables: a developer's own settings must not make these checks pass or fail.
    for name in list(os.environ):
        if name.startswith("LOCUST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)  # relative locustfile paths resolve as they do in the image's WORKDIR (see image_files)


def parse(argv: list[str]):
    """Parse a locust command line as `locust` does after importing our locustfile; argparse errors raise SystemExit."""
    return get_parser(default_config_files=[]).parse_args(argv)


def given_options(argv: list[str]) -> set[str]:
    """Names of the options a command line sets to something other than their default."""
    defaults, parsed = vars(parse([])), vars(parse(argv))
    return {name for name, value in parsed.items() if value != defaults.get(name)}


def project_settings(options):
    """The project's own checks (URI, collection name, weights, ...), as the master runs them at test start."""
    return settings_from(SimpleNamespace(parsed_options=options, host=options.host))


def interpolate(text: str) -> str:
    """Compose's ${NAME:-default} and ${NAME} with nothing set: the defaults a plain `docker compose up` uses."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)


def image_tag(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


# --- the Dockerfile and what ends up in the image ----------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(first.upper(), rest.strip()) for first, _, rest in (item.partition(" ") for item in logical)]


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context. Covers the pattern
    forms this repository uses (names, globs, **/ prefixes); negations (!) are refused by a test below."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], bare):
                return True
    return False


def image_files() -> dict[str, str]:
    """Image path -> repository path of every file the Dockerfile COPYs from the build context."""
    patterns, workdir, files = dockerignore_patterns(), PurePosixPath("/"), {}
    for instruction, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "WORKDIR":
            workdir = workdir / arguments
        elif instruction == "COPY":
            *sources, dest = shlex.split(arguments)
            assert not any(s.startswith("--") for s in sources), "COPY flags are not modelled by this test"
            target = workdir / dest
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"the Dockerfile copies {source}, which is not in the repository"
                if path.is_dir():
                    for file in path.rglob("*"):
                        relative = file.relative_to(ROOT).as_posix()
                        if file.is_file() and not ignored(relative, patterns):
                            files[str(target / file.relative_to(path).as_posix())] = relative
                elif not ignored(source, patterns):
                    into_dir = dest.endswith("/") or len(sources) > 1
                    files[str(target / path.name if into_dir else target)] = source
    return files


def dockerfile(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_instructions(DOCKERFILE.read_text()) if name == instruction]


def test_dockerfile_workdir_entrypoint_and_base_image():
    assert dockerfile("WORKDIR")[-1] == "/app"
    assert json.loads(dockerfile("ENTRYPOINT")[-1]) == ["locust"]
    base = dockerfile("FROM")[0]
    # The project's interpreter, pinned to a minor version and a Debian release: not `latest`, not a moving `3`.
    assert re.fullmatch(r"python:3\.11-slim-\w+", base), base
    # The Helm chart runs `loadtest.locustCmd`; the image's venv must be where that points (checked in the Helm test).
    assert any("python -m venv /opt/venv" in run for run in dockerfile("RUN"))
    assert any(env.startswith("PATH=/opt/venv/bin:") for env in dockerfile("ENV"))
    assert dockerfile("USER") and dockerfile("USER")[-1] != "root"


def test_image_holds_the_locustfile_the_package_source_and_no_secrets():
    files = image_files()
    assert files["/app/locustfiles/locustfile.py"] == "locustfiles/locustfile.py"
    assert files["/app/pyproject.toml"] == "pyproject.toml"
    assert files["/app/README.md"] == "README.md"  # pyproject.toml's readme: `pip install .` fails without it
    assert files["/app/locust_milvus/config/options.py"] == "locust_milvus/config/options.py"
    assert "/app/data/python_stdlib_docs.jsonl" in files  # --dataset data/... works in the image as in a checkout
    assert not [path for path in files.values() if PurePosixPath(path).name == ".env" or "__pycache__" in path]


def test_pip_install_in_the_image_installs_every_package():
    # The image runs a plain `pip install .` (no editable install, no source tree on sys.path): a subpackage that
    # pyproject.toml does not list is missing there, and the locustfile fails to import in the container only.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools_config = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    declared = setuptools_config.get("packages")
    if isinstance(declared, dict):  # packages.find: setuptools discovers them itself
        from setuptools import find_packages

        find = declared.get("find", {})
        declared = find_packages(where=str(ROOT / find.get("where", ["."])[0]), include=find.get("include", ["*"]))
    on_disk = {
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for init in (ROOT / "locust_milvus").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - set(declared or []) == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_dockerignore_keeps_keys_out_and_lets_the_copied_files_in():
    patterns = dockerignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "negations are not modelled by `ignored`"
    assert ignored(".env", patterns)
    assert ignored("locust_milvus/__pycache__/options.cpython-311.pyc", patterns)
    for needed in ("pyproject.toml", "README.md", "locust_milvus/config/options.py", "locustfiles/locustfile.py"):
        assert not ignored(needed, patterns), needed


# --- docker-compose.yml --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    # check-jsonschema vendors the Compose Specification's schema (compose-spec/compose-spec, Apache-2.0).
    schema = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    assert schema.is_file(), "check-jsonschema no longer ships compose-spec.json where this test looks"
    return json.loads(schema.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(schema: dict, document: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_is_valid_compose_specification(compose_schema, compose):
    assert schema_errors(compose_schema, compose) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["worker"].update(scale_workers=4),  # no such key
        lambda c: c["services"]["worker"]["depends_on"]["milvus"].update(condition="healthy"),  # service_healthy
        lambda c: c["services"]["milvus"]["healthcheck"].update(interval=["10s"]),
        lambda c: c["services"]["master"].update(ports="8089:8089"),  # a list, not a string
    ],
)
def test_schema_refuses_a_broken_copy(compose_schema, compose, breakage):
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert schema_errors(compose_schema, broken)


def test_milvus_stack_is_pinned_to_milvus_2_6_with_its_dependencies(compose):
    services = compose["services"]
    for name in ("etcd", "minio", "milvus"):
        tag = image_tag(services[name]["image"])
        assert tag and tag != "latest", f"{name} must be pinned: {services[name]['image']}"
    assert re.fullmatch(r"milvusdb/milvus:v2\.6\.\d+", services["milvus"]["image"])
    assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", services["etcd"]["image"])
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", services["minio"]["image"])
    assert services["milvus"]["environment"] == {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000"}


def test_every_server_has_a_health_check_and_everything_waits_for_health(compose):
    services = compose["services"]
    for name in ("etcd", "minio", "milvus"):
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert "9091/healthz" in " ".join(services["milvus"]["healthcheck"]["test"])
    assert services["milvus"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"}, "minio": {"condition": "service_healthy"},
    }
    for locust_service in ("master", "worker"):
        assert services[locust_service]["depends_on"]["milvus"] == {"condition": "service_healthy"}


def test_master_serves_the_web_ui_and_workers_scale(compose):
    services = compose["services"]
    published = [interpolate(p) for p in services["master"]["ports"]]
    assert any(p.rsplit(":", 1)[-1] == "8089" for p in published), published
    assert "8089:8089" in published  # the UI is on http://localhost:8089 with nothing set
    worker = services["worker"]
    # `--scale worker=N` needs containers without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["image"] == services["master"]["image"] and worker["build"] == services["master"]["build"] == "."
    assert (ROOT / worker["build"] / "Dockerfile").is_file()
    assert image_tag(worker["image"]) not in ("", "latest")


def test_master_command_is_a_valid_invocation_against_the_compose_milvus(compose):
    argv = compose["services"]["master"]["command"]
    options = parse(argv)
    assert options.master and not options.worker
    assert options.host == f"http://milvus:{MILVUS_GRPC_PORT}"
    assert options.host.split("//")[1].split(":")[0] in compose["services"]
    assert f"/app/{options.locustfile}" in image_files(), "the locustfile is not where WORKDIR /app puts it"
    assert (options.collection, options.drop_collection) == ("locust_milvus", True)  # custom options, parsed
    settings = project_settings(options)
    assert settings.uri == f"http://milvus:{MILVUS_GRPC_PORT}" and settings.collection == "locust_milvus"


def test_worker_command_gives_only_the_locustfile_and_the_master(compose):
    services = compose["services"]
    argv = services["worker"]["command"]
    options = parse(argv)
    assert options.worker and options.master_host in services and options.master_host == "master"
    assert f"/app/{options.locustfile}" in image_files()
    # Everything else, --host included, arrives from the master when a test starts (docs/distributed.md).
    assert given_options(argv) == {"locustfile", "worker", "master_host"}


@pytest.mark.parametrize("extra", [["--colection", "x"], ["--top-k", "0"], ["--consistency-level", "Weak"]])
def test_a_bad_project_option_in_the_command_is_refused(compose, extra):
    # The parser knows the project's options (a misspelt or out-of-range one stops locust before it starts), so
    # the passing checks above are not the parser accepting anything.
    with pytest.raises(SystemExit):
        parse(compose["services"]["master"]["command"] + extra)


# --- deploy/helm/locust-values.yaml --------------------------------------------------------------------------------

# Keys and types of the community chart's values (deliveryhero/helm-charts, stable/locust/README.md, chart 0.33.0,
# app 2.32.2: the values table its helm-docs generate). "object" and "list" values are free-form below their key.
CHART_VALUES = """
affinity object; extraConfigMaps object; extraLabels object; extraObjects list; fullnameOverride string;
hostAliases list; image.pullPolicy string; image.repository string; image.tag string; imagePullSecrets list;
images.defaultLocustRepository string; images.defaultLocustTag string; images.gitSync.pullPolicy string;
images.gitSync.repository string; images.gitSync.tag string; images.master.pullPolicy string;
images.master.repository string; images.master.tag string; images.worker.pullPolicy string;
images.worker.repository string; images.worker.tag string; ingress.annotations object; ingress.className string;
ingress.enabled bool; ingress.hosts list; ingress.tls list; loadtest.enabled bool; loadtest.environment object;
loadtest.environment_external_secret object; loadtest.environment_secret object; loadtest.excludeTags string;
loadtest.headless bool; loadtest.locustCmd string; loadtest.locust_host string; loadtest.locust_lib_configmap string;
loadtest.locust_locustfile string; loadtest.locust_locustfile_configmap string; loadtest.locust_locustfile_path string;
loadtest.mount_external_secret object; loadtest.name string; loadtest.pip_packages list; loadtest.tags string;
locustfiles.gitSync.containerLifecycleHooks object; locustfiles.gitSync.containerName string;
locustfiles.gitSync.depth int; locustfiles.gitSync.enabled bool; locustfiles.gitSync.env list;
locustfiles.gitSync.envFrom string; locustfiles.gitSync.extraVolumeMounts list; locustfiles.gitSync.maxFailures int;
locustfiles.gitSync.period string; locustfiles.gitSync.ref string; locustfiles.gitSync.repo string;
locustfiles.gitSync.resources object; locustfiles.gitSync.securityContext object;
locustfiles.gitSync.securityContexts.container object; locustfiles.gitSync.subPath string; locustfiles.gitSync.uid int;
locustfiles.mountPath string; locustfiles.requirements string; master.affinity object; master.args list;
master.auth.enabled bool; master.auth.password string; master.auth.username string; master.command list;
master.deploymentAnnotations object; master.environment object; master.envs_include_default bool;
master.extraPorts string; master.image string; master.livenessProbe object; master.logLevel string;
master.nodeSelector object; master.pdb.enabled bool; master.readinessProbe.failureThreshold int;
master.readinessProbe.httpGet.path string; master.readinessProbe.httpGet.port int;
master.readinessProbe.httpGet.scheme string; master.readinessProbe.initialDelaySeconds int;
master.readinessProbe.periodSeconds int; master.readinessProbe.successThreshold int;
master.readinessProbe.timeoutSeconds int; master.replicas int; master.resources object; master.restartPolicy string;
master.serviceAccountAnnotations object; master.startupProbe object; master.strategy.type string;
master.tolerations list; nameOverride string; nodeSelector object; podSecurityContext object; securityContext object;
service.annotations object; service.extraLabels object; service.loadBalancerIP string; service.port int;
service.targetPort int; service.type string; tolerations list; worker.affinity object; worker.args list;
worker.command list; worker.deploymentAnnotations object; worker.environment object; worker.envs_include_default bool;
worker.hpa.enabled bool; worker.hpa.maxReplicas int; worker.hpa.minReplicas int;
worker.hpa.targetCPUUtilizationPercentage int; worker.image string; worker.keda.cooldownPeriod int;
worker.keda.enabled bool; worker.keda.pollingInterval int; worker.keda.triggers string; worker.logLevel string;
worker.nodeSelector object; worker.pdb.enabled bool; worker.replicas int; worker.resources object;
worker.restartPolicy string; worker.serviceAccountAnnotations object; worker.strategy.type string;
worker.tolerations list
"""
CHART_KEYS = dict(item.split() for item in CHART_VALUES.replace("\n", " ").split(";"))
TYPES = {"object": dict, "list": list, "string": str, "bool": bool, "int": int}


def unknown_chart_values(values: dict, prefix: str = "") -> list[str]:
    """Every value that is not a chart key of the chart's type, as 'key: why'."""
    problems = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in CHART_KEYS:
            expected = TYPES[CHART_KEYS[path]]
            # bool is an int in Python; a `true` where the chart wants a number is still wrong.
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                problems.append(f"{path}: {type(value).__name__}, the chart's is {CHART_KEYS[path]}")
        elif isinstance(value, dict) and any(k.startswith(f"{path}.") for k in CHART_KEYS):
            problems += unknown_chart_values(value, f"{path}.")
        else:
            problems.append(f"{path}: not a value of the chart")
    return problems


@pytest.fixture(scope="module")
def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def chart_commands(values: dict) -> tuple[list[str], list[str]]:
    """The master's and a worker's locust arguments as the chart builds them: its own mode, locustfile and host
    (master) or master address (worker), then the extra `args` of the values."""
    load = values["loadtest"]
    locustfile = f"--locustfile={load.get('locust_locustfile_path', '/mnt/locust')}/{load['locust_locustfile']}"
    master = ["--master", locustfile, f"--host={load['locust_host']}", *values["master"].get("args", [])]
    worker = ["--worker", locustfile, f"--master-host={RELEASE}", *values["worker"].get("args", [])]
    return master, worker


def test_helm_values_are_all_keys_of_the_locust_chart(helm_values):
    assert unknown_chart_values(helm_values) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda v: v["worker"].update(replica=3),  # replicas
        lambda v: v["worker"].update(replicas="3"),  # an int in the chart
        lambda v: v["loadtest"].update(locust_hosts="http://x:19530"),
        lambda v: v.update(milvus={"host": "x"}),
    ],
)
def test_key_check_refuses_a_broken_copy(helm_values, breakage):
    broken = copy.deepcopy(helm_values)
    breakage(broken)
    assert unknown_chart_values(broken)


def test_helm_master_command_is_a_valid_invocation_against_the_milvus_chart(helm_values):
    master, _ = chart_commands(helm_values)
    options = parse(master)
    assert options.master
    # The Milvus Helm chart's service for release `my-release`.
    assert options.host == f"http://my-release-milvus:{MILVUS_GRPC_PORT}"
    assert project_settings(options).uri == options.host
    # The ConfigMap is made from this repository's locustfile (deploy/README.md), under the name the chart runs.
    assert (ROOT / "locustfiles" / helm_values["loadtest"]["locust_locustfile"]).is_file()


def test_helm_worker_command_needs_nothing_but_the_master(helm_values):
    _, worker = chart_commands(helm_values)
    assert parse(worker).worker
    assert given_options(worker) == {"locustfile", "worker", "master_host"}


def test_deploy_readme_commands_match_the_values(helm_values):
    readme = DEPLOY_README.read_text()
    load = helm_values["loadtest"]
    configmap = f"kubectl create configmap {load['locust_locustfile_configmap']} "
    assert f"{configmap}--from-file=locustfiles/{load['locust_locustfile']}" in readme
    assert f"helm install {RELEASE} " in readme and "-f deploy/helm/locust-values.yaml" in readme
    assert "helm install my-release zilliztech/milvus" in readme  # the release the values' locust_host names


def test_helm_runs_the_image_of_this_repository(helm_values, compose):
    locust_cmd = helm_values["loadtest"]["locustCmd"]
    assert locust_cmd == "/opt/venv/bin/locust"  # the Dockerfile's venv
    assert helm_values["master"]["image"] == helm_values["worker"]["image"] == compose["services"]["master"]["image"]
    assert image_tag(helm_values["master"]["image"]) not in ("", "latest")


def test_helm_workers_get_a_core_each_without_a_cpu_limit(helm_values):
    # One Locust worker uses at most about one core (docs/distributed.md); a CFS limit would throttle it in bursts.
    resources = helm_values["worker"]["resources"]
    assert str(resources["requests"]["cpu"]) == "1"
    assert "cpu" not in resources.get("limits", {})


# --- the docs that describe these files ----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["docs/distributed.md", "deploy/README.md"])
def test_relative_links_in_the_docs_resolve(doc):
    path = ROOT / doc
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    relative = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert relative, f"{doc} links nothing in the repository"
    missing = [link for link in relative if not (path.parent / link).exists()]
    assert missing == []


def test_docs_name_the_tags_that_the_files_use(compose):
    milvus_tag = image_tag(compose["services"]["milvus"]["image"])
    for doc in ("docs/distributed.md", "deploy/README.md"):
        assert milvus_tag in (ROOT / doc).read_text(), f"{doc} does not name Milvus {milvus_tag}"
