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


def test_a_torchvision_backbone_still_builds():
    from protobench.models.backbones import build_backbone

    assert build_backbone("resnet18").out_channels == 512
    assert build_backbone("vgg11").out_channels == 512
    assert build_backbone("resnet", block="bottleneck", layers=[1, 1, 1, 1], widths=[4, 4, 4, 4]).out_channels == 16
