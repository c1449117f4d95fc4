"""Start-up of the demo: loading a model with a small backbone imports neither torchvision, whose models
package imports torch._dynamo, nor torch._dynamo itself, which the meta device's first forward pass imports
(seconds before the first image; docs/performance.md, Demo)."""

import subprocess
import sys


def test_loading_the_demo_model_imports_neither_torchvision_nor_the_compiler():
    code = ("import sys\n"
            "from protobench.adapters.protopnet import ProtoPNetAdapter\n"
            "from protobench.demo import demo_checkpoint\n"
            "ProtoPNetAdapter.load(demo_checkpoint())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision' or m.startswith('torch._dynamo')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_demo_with_its_report_never_imports_the_compiler(tmp_path):
    # torch.use_deterministic_algorithms, the meta device and torchvision each import it on first use
    code = ("import sys\n"
            "from protobench.cli.app import app\n"
            "try:\n"
            f"    app(['evaluate', '--limit', '2', '--steps', '1', '--out', {str(tmp_path / 'demo')!r}])\n"
            "except SystemExit as end:\n"
            "    assert end.code == 0, end.code\n"
            "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor', 'torchvision'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "demo" / "report" / "report.html").is_file()


def test_a_torchvision_backbone_still_builds():
    from protobench.models.backbones import build_backbone

    assert build_backbone("resnet18").out_channels == 512
    assert build_backbone("vgg11").out_channels == 512
    assert build_backbone("resnet", block="bottleneck", layers=[1, 1, 1, 1], widths=[4, 4, 4, 4]).out_channels == 16
