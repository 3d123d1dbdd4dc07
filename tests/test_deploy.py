"""The deployment files: images, the dask/dask chart's values, the front door's manifests.

No docker, helm or Kubernetes here: what can be checked without them is checked
against their sources of truth instead. The Dockerfiles install with the README's
own command; every key of helm/dask-values.yaml is one the dask/dask chart documents
(its values.yaml at a pinned commit, vendored in tests/data/); every ``DASK_OMAX__*``
variable names a real omax setting; the front door's manifests are well formed and
probe the routes that answer without auth. The entrypoint runs for real.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask.config
import httpx
import pytest
import yaml

import omax  # noqa: F401  (registers the omax settings with dask.config)

ROOT = Path(__file__).parent.parent
HELM = ROOT / "helm"
CHART_VALUES = ROOT / "tests" / "data" / "dask-chart-2024.1.1-59-g9b6836b-values.yaml"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]

# Values the chart hands to Kubernetes as they are (env lists, resources, volumes,
# probes...): the key must be the chart's, what is inside is Kubernetes'.
PASSED_THROUGH = {
    "env",
    "extraArgs",
    "resources",
    "mounts",
    "tolerations",
    "affinity",
    "nodeSelector",
    "livenessProbe",
    "readinessProbe",
    "securityContext",
    "annotations",
    "serviceAnnotations",
}
# Keys the chart documents in comments only (its templates read them).
COMMENTED = {"worker.threads_per_worker", "worker.port", "worker.serviceAccountName"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def values() -> dict[str, Any]:
    return yaml.safe_load((HELM / "dask-values.yaml").read_text())


def chart_defaults() -> dict[str, Any]:
    return yaml.safe_load(CHART_VALUES.read_text())


def unknown_keys(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> list[str]:
    """Our keys that the chart's defaults (or its comments) do not document."""
    bad = []
    for key, value in ours.items():
        path = f"{where}.{key}".lstrip(".")
        if key not in (theirs or {}) and path not in COMMENTED:
            bad.append(path)
        elif isinstance(value, dict) and key not in PASSED_THROUGH:
            bad += unknown_keys(value, (theirs or {}).get(key) or {}, path)
    return bad


def env_of(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in group["env"]}


def chart_merge(dest: Any, src: Any) -> Any:
    """Sprig's ``merge dest src`` (mergo without override), which the chart applies to
    each additional worker group over ``worker``: maps merge key by key, and a value
    the group leaves empty (0, "", [], {}, null, false) is taken from ``worker``."""
    if isinstance(dest, dict) and isinstance(src, dict):
        out = dict(src)
        for key, value in dest.items():
            out[key] = chart_merge(value, src[key]) if key in src else value
        return out
    return dest if dest or src is None else src


def groups() -> list[dict[str, Any]]:
    """The worker groups as the chart builds them, each additional one merged over
    ``worker``."""
    v = values()
    return [v["worker"], *(chart_merge(g, v["worker"]) for g in v["additional_worker_groups"])]


# ---- images ------------------------------------------------------------------------


def run_lines(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_with_the_readme_command(dockerfile):
    """The image installs omax with `make install`, the target README.md's `make run`
    and `make test` both run: a test of one is a test of the other."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: install\b", makefile, re.M)
    assert re.search(r"^test: install\b", makefile, re.M)
    assert "omax native build" in makefile.split("\ninstall:", 1)[1].split("\n\n")[0]
    assert "make run" in (ROOT / "README.md").read_text()
    runs = run_lines(dockerfile)
    installs = [r for r in runs if "make install" in r]
    assert len(installs) == 1, runs
    assert "pip install" not in " ".join(runs), "install only through the Makefile"
    assert any("g++" in r and "ninja-build" in r for r in runs), "the native step needs both"
    text = dockerfile.read_text()
    assert "ENTRYPOINT" in text and "docker/entrypoint.sh" in text


def entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    return subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **env},
    )


def test_entrypoint_runs_the_charts_old_dask_commands():
    """The chart starts `dask-scheduler` and `dask-worker`, which Dask no longer ships."""
    for old, new in [("dask-scheduler", "scheduler"), ("dask-worker", "worker")]:
        out = entrypoint(old, "--help", OMAX_NATIVE_BUILD="0")
        assert out.returncode == 0, out.stderr
        assert f"dask {new}" in out.stdout or "Usage:" in out.stdout
    out = entrypoint("omax", "--version", OMAX_NATIVE_BUILD="0")
    assert out.returncode == 0 and "omax" in out.stdout.lower(), out.stderr


# ---- the dask/dask chart's values --------------------------------------------------


def test_every_key_is_one_the_chart_documents():
    defaults = chart_defaults()
    for key in COMMENTED:  # the chart's comments still say so
        assert f"# {key.rsplit('.', 1)[1]}:" in CHART_VALUES.read_text(), key
    v = values()
    bad = unknown_keys(
        {k: x for k, x in v.items() if k != "additional_worker_groups"}, defaults, ""
    )
    for group in v["additional_worker_groups"]:  # each takes the options of `worker`
        bad += unknown_keys(group, defaults["worker"], "worker")
    assert not bad, f"not in the dask/dask chart's values: {bad}"


def test_omax_settings_are_real_ones():
    """Each ``DASK_OMAX__A__B_C`` names a key of omax/omax.yaml (a typo is silently
    ignored by Dask, so it is caught here)."""
    v = values()
    for group in [v["scheduler"], *groups()]:
        for name in env_of(group):
            if name.startswith("DASK_OMAX__"):
                key = ".".join(name.lower().split("__")).replace("dask_", "", 1)
                assert dask.config.get(key, default=KeyError) is not KeyError, name


def test_workers_threads_and_gpus_use_the_charts_own_keys():
    gpu, cpu = groups()
    for group in (gpu, cpu):
        assert "--nthreads" not in group["extraArgs"], "the chart passes it (threads_per_worker)"
        assert int(group["threads_per_worker"]) >= 1
        assert {"cpu", "memory", "nvidia.com/gpu"} <= set(group["resources"]["limits"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "GPU=1" in gpu["extraArgs"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["nodeSelector"] != cpu["nodeSelector"]
    # A 0 would be filled from `worker` by the chart's merge; "0" is kept.
    assert cpu["resources"]["limits"]["nvidia.com/gpu"] == "0"
    assert "GPU=1" not in cpu["extraArgs"]
    assert env_of(cpu)["DASK_OMAX__WORKER__DEVICE"]["value"] == "cpu"


def test_workers_keep_their_names_and_replicas_across_restarts():
    """Named after the node (one worker per node), replicas on the node's disk."""
    for group in groups():
        args, env = group["extraArgs"], env_of(group)
        name = args[args.index("--name") + 1]
        var = re.fullmatch(r"\$\((\w+)\)", name)
        assert var, "Kubernetes expands $(VAR) in args from the container's env"
        assert env[var[1]]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        anti = group["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
        store = env["DASK_OMAX__WORKER__STORE"]["value"]
        assert "{name}" in store
        mount = next(
            m for m in group["mounts"]["volumeMounts"] if store.startswith(m["mountPath"] + "/")
        )
        volume = next(x for x in group["mounts"]["volumes"] if x["name"] == mount["name"])
        assert "hostPath" in volume or "persistentVolumeClaim" in volume, volume
        assert env["XDG_CACHE_HOME"]["value"].startswith(mount["mountPath"])


def test_s3_credentials_come_from_a_secret():
    v = values()
    for group in [v["scheduler"], *groups()]:
        env = env_of(group)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "omax-s3", "key": name}
        assert env["DASK_OMAX__STORE__URL"]["value"].startswith("s3://")


def test_processes_preload_the_omax_plugins():
    v = values()
    assert v["scheduler"]["extraArgs"] == ["--preload", "omax.plugins.scheduler"]
    for group in groups():
        args = group["extraArgs"]
        assert args[args.index("--preload") + 1] == "omax.plugins.worker"


# ---- the front door's manifests ----------------------------------------------------


def frontdoor() -> dict[str, dict[str, Any]]:
    """The manifests `kubectl apply -k helm/frontdoor` applies, plus the optional ones,
    by kind."""
    root = HELM / "frontdoor"
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    files = [root / f for f in kustomization["resources"]] + sorted(root.glob("optional/*.yaml"))
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        assert d["metadata"]["name"]
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def test_frontdoor_deployment_serves_with_auth_and_probes():
    kinds = frontdoor()
    deployment = kinds["Deployment"]["omax-frontdoor"]
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["omax", "serve"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--insecure" not in args
    assert "--no-demo" in args  # no demo model written into a production store
    assert args[args.index("--scheduler") + 1] == "tcp://omax-dask-scheduler:8786"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(args[args.index("--port") + 1])
    assert container["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/api/health", "port": "http"}
    secrets = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert ("omax-frontdoor-auth", "jwt-secret") in secrets
    examples = kinds["Secret"]
    for name, key in secrets:
        assert key in examples[name]["stringData"], (name, key)


def test_frontdoor_service_and_ingress_reach_the_pods():
    kinds = frontdoor()
    pod = kinds["Deployment"]["omax-frontdoor"]["spec"]["template"]
    service = kinds["Service"]["omax"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    backend = kinds["Ingress"]["omax"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "omax"
    assert backend["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_frontdoor_probe_routes_answer_without_auth():
    """The probes carry no token: `/` and `/api/health` must stay open with auth on."""
    from omax.auth.roles import required_role

    pod = frontdoor()["Deployment"]["omax-frontdoor"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert required_role(container[probe]["httpGet"]["path"]) is None
    assert shlex.join(container["args"]).startswith("omax serve --scheduler")


# ---- the deployment, run as processes ----------------------------------------------


def kube_env(entries: list[dict[str, Any]], tmp: Path, node: str) -> dict[str, str]:
    """A container's env as Kubernetes would set it here: the node's disk
    (/var/lib/omax) is a folder of ``tmp``, the store a local folder, no secrets."""
    env = {}
    for e in entries:
        if "value" in e:
            env[e["name"]] = str(e["value"]).replace("/var/lib/omax", str(tmp / node))
        elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = node
    env["DASK_OMAX__STORE__URL"] = str(tmp / "origin")
    env.pop("XDG_CACHE_HOME", None)  # this machine's native build, not a fresh one
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(a)) for a in args]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    bindir = str(Path(sys.executable).parent)
    return subprocess.Popen(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "OMAX_NATIVE_BUILD": "0",
            **env,
        },
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_worker_args(scheduler: str, dashboard: int) -> list[str]:
    """The CPU group's container args, as the chart's template builds them (the
    dashboard's port, 8790 in a pod, a free one here)."""
    group = groups()[1]
    return [
        group["image"]["dask_worker"],
        scheduler,
        "--nthreads",
        str(group["threads_per_worker"]),
        "--memory-limit",
        group["resources"]["limits"]["memory"],
        "--no-dashboard",
        "--dashboard-address",
        str(dashboard),
        *group["extraArgs"],
    ]


def wait_until(check: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if result := check():
                return result
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.slow
@pytest.mark.e2e
def test_deployment_serves_and_a_restarted_worker_keeps_its_replicas(tmp_path):
    """Scheduler, CPU worker and front door started from the image's entrypoint with
    the chart's and the Deployment's arguments and environment: the probes answer as
    Kubernetes expects, a pulled model is replicated to the node's disk, and the worker,
    restarted, comes back under its node's name with the replica, fetching nothing."""
    from omax.sharding import bundled
    from omax.sharding.modelstore import ModelStore

    ModelStore(str(tmp_path / "origin")).import_path(bundled.smollm2_gguf_path(), "smollm2:135m")
    port = free_port()
    v = values()
    procs = []
    try:
        env = kube_env(v["scheduler"]["env"], tmp_path, "node-s")
        env["DASK_OMAX__REPLICATION__TARGET"] = "1"
        sdash, wdash = free_port(), free_port()
        args = ["dask-scheduler", f"--port={port}", f"--dashboard-address=:{sdash}"]
        procs.append(start(args + v["scheduler"]["extraArgs"], env, tmp_path / "scheduler.log"))
        scheduler = f"tcp://127.0.0.1:{port}"
        wenv = kube_env(groups()[1]["env"], tmp_path, "node-a")
        wargs = expand(cpu_worker_args(scheduler, wdash), wenv)
        procs.append(worker := start(wargs, wenv, tmp_path / "worker-1.log"))

        door = frontdoor()["Deployment"]["omax-frontdoor"]["spec"]["template"]["spec"]
        container = door["containers"][0]
        http = free_port()
        dargs = [scheduler if a.startswith("tcp://") else a for a in container["args"]]
        dargs[dargs.index("--port") + 1] = str(http)
        denv = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        denv["DASK_OMAX__AUTH__JWT_SECRET"] = "k" * 40  # from the Secret
        denv["DASK_OMAX__STORE__URL"] = str(tmp_path / "origin")
        procs.append(start(dargs, denv, tmp_path / "frontdoor.log"))
        url = f"http://127.0.0.1:{http}"
        live = container["livenessProbe"]["httpGet"]["path"]
        ready = container["readinessProbe"]["httpGet"]["path"]
        wait_until(lambda: httpx.get(url + live).status_code == 200, "liveness")
        wait_until(lambda: httpx.get(url + ready).json()["workers"] == 1, "readiness")
        for group, port_ in ((v["scheduler"], sdash), (groups()[1], wdash)):  # their probes
            path = group["livenessProbe"]["httpGet"]["path"]
            assert httpx.get(f"http://127.0.0.1:{port_}{path}").status_code == 200
        assert httpx.get(url + "/api/tags").status_code == 401  # auth is on

        om = omax.connect(scheduler)
        try:
            om.pull("smollm2:135m", quiet=True)
            (copy,) = om.wait_replicated("smollm2:135m", copies=1).of("smollm2:135m")
            assert any((tmp_path / "node-a" / "replicas" / "node-a").iterdir())
            stop(worker)
            wait_until(lambda: httpx.get(url + ready).status_code == 503, "not ready")
            procs.append(start(wargs, wenv, tmp_path / "worker-2.log"))
            wait_until(lambda: om.replication().complete("smollm2:135m") == 1, "replica back")
            assert "fetched" not in (tmp_path / "worker-2.log").read_text()
            reply = om.chat("smollm2:135m", "What is the capital of France?", temperature=0)
            assert "Paris" in reply.text
        finally:
            om.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                stop(p)
