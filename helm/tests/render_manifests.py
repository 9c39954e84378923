"""Writes manifests/install.yaml from the chart (run by manifests/generate.sh), or with --check
compares it with the committed file."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import helmlib  # noqa: E402

helmlib.ensure_env()

with helmlib.Sim(helmlib.kube_sim_binary()) as sim:
    text = helmlib.manifests_text(sim)
path = helmlib.MANIFESTS / "install.yaml"
if "--check" in sys.argv:
    if path.read_text() != text:
        sys.exit(f"{path} differs from the chart: run manifests/generate.sh")
    print(f"{path} matches the chart")
else:
    path.write_text(text)
    print(f"wrote {path}")
