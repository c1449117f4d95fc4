"""EvalProtoPNet's checkpoints, written as its main.py writes them ({'model', 'epoch', 'args'}), read
without its code, against its forward written out (model.OursNet: the projection maps, max pooling and
the softmax-weighted class sums; from reading it, no code copied) and a slow per-element formula."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from originals import BasicBlockW, ResNetFeaturesW
from protobench.errors import CheckpointError
from protobench.models.lookup import get_adapter
from test_originals import randomize_batch_norm


class OursNetW(nn.Module):
    """model.OursNet's state: features, add_on_layers, prototype_vectors, ones, activation_weight."""

    def __init__(self, add_on="regular", num_classes=3, prototype_shape=(6, 4, 1, 1)):
        super().__init__()
        self.num_classes, self.num_prototypes = num_classes, prototype_shape[0]
        self.features = ResNetFeaturesW(BasicBlockW, [1, 1, 1, 1])  # ResNet strides: 4 x 4 maps at 128 px
        if add_on == "regular":  # one conv: its `else` branch
            self.add_on_layers = nn.Sequential(nn.Conv2d(8, prototype_shape[1], 1), nn.Sigmoid())
        else:  # 8 -> 4 channels: one bottleneck pair
            self.add_on_layers = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(prototype_shape))
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)
        self.activation_weight = nn.Parameter(torch.randn(self.num_prototypes))

    def original(self, x):
        """Its forward's arithmetic, operation for operation (float32)."""
        z = self.add_on_layers(self.features(x))
        project = F.conv2d(input=z, weight=F.normalize(self.prototype_vectors, p=2, dim=1))
        act = F.max_pool2d(project, kernel_size=(project.size(2), project.size(3))).view(-1, self.num_prototypes)
        weight = F.softmax(self.activation_weight.reshape(self.num_classes, -1), dim=-1)
        weight = (weight * (self.num_prototypes // self.num_classes)).flatten(start_dim=0)
        return project, (act * weight).reshape(-1, self.num_classes, self.num_prototypes // self.num_classes).sum(-1)

    def slow(self, x):
        """The same, one number at a time, in float64."""
        z = self.add_on_layers(self.features(x)).double()
        p = self.prototype_vectors.double()[:, :, 0, 0]
        b, _, h, w = z.shape
        maps = torch.zeros(b, self.num_prototypes, h, w, dtype=torch.float64)
        for i in range(b):
            for j in range(self.num_prototypes):
                for r in range(h):
                    for c in range(w):
                        maps[i, j, r, c] = (z[i, :, r, c] * p[j]).sum() / p[j].norm()
        per = self.num_prototypes // self.num_classes
        logits = torch.zeros(b, self.num_classes, dtype=torch.float64)
        for k in range(self.num_classes):
            w_k = torch.softmax(self.activation_weight.double()[k * per:(k + 1) * per], dim=0) * per
            for j in range(per):
                logits[:, k] += maps[:, k * per + j].amax(dim=(1, 2)) * w_k[j]
        return maps, logits


def write(tmp_path, add_on="regular", args=True):
    net = OursNetW(add_on).eval()
    randomize_batch_norm(net)
    saved = {"model": net.state_dict(), "epoch": 11}
    if args:
        saved["args"] = argparse.Namespace(nb_classes=3, input_size=128, base_architecture="resnet34",
                                           prototype_shape=[6, 4, 1, 1], add_on_layers_type=add_on)
    path = tmp_path / "save_model.pth"
    torch.save(saved, path)
    return path, net


@pytest.mark.parametrize("add_on", ["regular", "bottleneck"])
def test_its_checkpoint_loads_and_computes_its_formula(tmp_path, add_on):
    path, net = write(tmp_path, add_on)
    adapter = get_adapter("auto").load(str(path))
    assert adapter.name == "evalprotopnet" and adapter.info.input_size == 128 and adapter.info.num_classes == 3
    assert adapter.model.cfg.add_on == add_on
    assert adapter.prototype_class_identity.argmax(dim=1).tolist() == [0, 0, 1, 1, 2, 2]
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        maps, logits = adapter(x)
        ref_maps, ref_logits = net.original(x)
        slow_maps, slow_logits = net.slow(x)
    assert torch.equal(maps, ref_maps) and torch.equal(logits, ref_logits)  # its own arithmetic, bit for bit
    assert torch.allclose(maps.double(), slow_maps, atol=1e-5) and torch.allclose(logits.double(), slow_logits,
                                                                                  atol=1e-5)
    with torch.no_grad():  # no squared distance: the float32 mode is the same arithmetic
        assert torch.equal(adapter.set_distance("float32")(x)[1], logits)


def test_without_its_args_the_class_count_is_asked_for(tmp_path):
    path, net = write(tmp_path, args=False)
    with pytest.raises(CheckpointError, match="num_classes"):
        get_adapter("evalprotopnet").load(str(path))
    adapter = get_adapter("evalprotopnet").load(str(path), num_classes=3, img_size=128)
    with torch.no_grad():
        x = torch.randn(1, 3, 128, 128)
        assert torch.equal(adapter(x)[1], net.original(x)[1])


def test_an_add_on_of_neither_layout_is_refused(tmp_path):
    net = OursNetW()
    net.add_on_layers = nn.Sequential(nn.Conv2d(8, 5, 1), nn.ReLU(), nn.Conv2d(5, 4, 1), nn.Sigmoid())
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(nb_classes=3, input_size=128)}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="add_on_layers"):
        get_adapter("evalprotopnet").load(str(tmp_path / "m.pth"))
