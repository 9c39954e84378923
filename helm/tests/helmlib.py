"""Helm without the helm binary: helm-sdkpy (Helm's Go library behind a Python API) installing
into the project's Kubernetes API simulator (testing/kube-sim/src/bin/kube-sim.rs).

helm-sdkpy has no `helm template` (no dry-run, no client-only install), so a chart is rendered by
installing it for real into a fresh simulator, with the release stored in memory
(HELM_DRIVER=memory: the simulator speaks JSON only, Helm's Secret storage driver sends protobuf).
The release's `manifest` is exactly what `helm template` would print for the same values, and
the install itself proves the API server accepted every object.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile



def ensure_env() -> None:
    """Helm's Go runtime reads its environment when the library loads: re-exec the calling script
    with HELM_DRIVER=memory set from the start."""
    if os.environ.get("HELM_DRIVER") != "memory":
        env = dict(os.environ, HELM_DRIVER="memory")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "streamscan"


def kube_sim_binary() -> pathlib.Path:
    """Builds (debug, incremental) and returns the kube-sim binary."""
    if os.environ.get("KUBE_SIM"):
        return pathlib.Path(os.environ["KUBE_SIM"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "streamscan-kube-sim", "--bin", "kube-sim"],
                   cwd=ROOT, check=True)
    return target / "debug" / "kube-sim"


def binaries() -> dict[str, pathlib.Path]:
    """Debug builds of streamscan-operator, -gateway and -worker (STREAMSCAN_BIN_DIR, or built)."""
    if os.environ.get("STREAMSCAN_BIN_DIR"):
        d = pathlib.Path(os.environ["STREAMSCAN_BIN_DIR"])
    else:
        subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "streamscan-operator", "-p", "streamscan-gateway",
                        "-p", "streamscan-worker", "--bin", "streamscan-operator", "--bin", "streamscan-gateway",
                        "--bin", "streamscan-worker"], cwd=ROOT, check=True)
        d = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
    return {name: d / f"streamscan-{name}" for name in ("operator", "gateway", "worker")}


class Sim:
    """A kube-sim process with its kubeconfig; stop() or use as a context manager."""

    def __init__(self, binary: pathlib.Path):
        self.dir = tempfile.TemporaryDirectory(prefix="streamscan-helm-")
        self.kubeconfig = str(pathlib.Path(self.dir.name) / "kubeconfig")
        self.proc = subprocess.Popen([str(binary), "--kubeconfig", self.kubeconfig],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"kube-sim did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, check=check)


def _helm():
    import helm_sdkpy  # noqa: PLC0415  (installed by scripts/test.sh)
    return helm_sdkpy


def install(sim: Sim, release: str, namespace: str, values: dict, chart: pathlib.Path = CHART) -> dict:
    """`helm install RELEASE CHART -n NAMESPACE --create-namespace` with VALUES; returns the release."""
    h = _helm()
    # Helm creates namespaces with its typed (protobuf) client, which the simulator does not
    # speak (nor does `kubectl create`): apply it with kubectl first.
    if sim.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        sim.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n")
    config = h.Configuration(namespace=namespace, kubeconfig=sim.kubeconfig)
    return asyncio.run(h.Install(config).run(release, str(chart), values=values or None,
                                             create_namespace=False, wait=False, timeout=60))


def lint(sim: Sim, chart: pathlib.Path = CHART) -> dict:
    h = _helm()
    config = h.Configuration(namespace="default", kubeconfig=sim.kubeconfig)
    return asyncio.run(h.Lint(config).run(str(chart)))


def crd_texts(chart: pathlib.Path = CHART) -> list[str]:
    return [p.read_text() for p in sorted((chart / "crds").glob("*.yaml"))]


def render(sim: Sim, release: str, namespace: str, values: dict) -> str:
    """The chart's CRDs followed by the rendered templates, as installed."""
    rel = install(sim, release, namespace, values)
    return rel["manifest"]


MANIFESTS = ROOT / "manifests"
RELEASE = "streamscan"
NAMESPACE = "streamscan"
HEADER = """# GENERATED by manifests/generate.sh from helm/streamscan with manifests/values.yaml
# (release "streamscan", namespace "streamscan"). Do not edit: helm/tests/check_chart.py fails
# when this file differs from the chart. Before applying, create the Secrets the pods mount:
#   kubectl create namespace streamscan
#   kubectl -n streamscan create secret generic streamscan-internal-token --from-literal=token="$(openssl rand -hex 32)"
#   kubectl -n streamscan create secret generic streamscan-gateway-jwt --from-file=key=jwt-public.pem
"""
NAMESPACE_DOC = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: streamscan
"""


def manifests_values() -> dict:
    import yaml  # noqa: PLC0415
    return yaml.safe_load((MANIFESTS / "values.yaml").read_text())


def clean(manifest: str) -> str:
    """Drops Helm's blank lines with trailing spaces so the plain YAML reads well."""
    lines = [line.rstrip() for line in manifest.splitlines()]
    out: list[str] = []
    for line in lines:
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    docs = [d.strip("\n") for d in "\n".join(out).split("\n---\n")]
    return "\n---\n".join(d for d in docs if d.strip() and d.strip() != "---") + "\n"


def manifests_text(sim: Sim) -> str:
    """manifests/install.yaml: Namespace, the CRD, then the templates in Helm's install order."""
    rendered = render(sim, RELEASE, NAMESPACE, manifests_values())
    crds = [c.split("\n---\n", 1)[1] if c.startswith("#") else c for c in crd_texts()]
    body = clean(rendered).lstrip("-\n")
    return HEADER + "---\n" + NAMESPACE_DOC + "---\n" + "---\n".join(c.lstrip("-\n") for c in crds) + "---\n" + body
