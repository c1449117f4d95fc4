"""Writers of checkpoints in the original repositories' on-disk formats, for tests.

The classes below carry the attribute names, submodule layout and non-state attributes
that the original research code gives its models (from the notes on each repository; no
code is copied), with tiny widths. `original_modules` puts thin subclasses of them into
throwaway modules under the original import paths (`model.PPNet`,
`models.resnet_features.BasicBlock`, `prototree.prototree.ProtoTree`, ...), so that
`torch.save(model)` writes exactly the class references the original files hold; on exit
the modules are gone again, so protobench must read the files without them. ProtoViT's
classes (its model.PPNet and timm 0.4.12's DeiT and CaiT) are in tests/originals_vit.py.

Their `forward` methods are the slow, obvious reference implementations the tests compare against.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from originals_vit import VIT_LAYOUT


class BasicBlockW(nn.Module):
    expansion = 1
    num_layers = 2

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class BottleneckW(nn.Module):
    expansion = 4
    num_layers = 3

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetFeaturesW(nn.Module):
    """ResNet_features: stem + layer1..4, no pooling; `block` is kept as a class reference."""

    def __init__(self, block, layers, widths=(4, 4, 8, 8), strides=(1, 2, 2, 2)):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.kernel_sizes, self.strides, self.paddings = [7, 3], [2, 2], [3, 1]
        self.block = block
        self.layers = list(layers)
        for i in range(4):
            setattr(self, f"layer{i + 1}", self._make_layer(block, widths[i], layers[i], strides[i]))

    def _make_layer(self, block, planes, num_blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, num_blocks)]
        self.strides += [stride] + [1] * (block.num_layers - 1) * num_blocks
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            for blk in getattr(self, f"layer{i}"):
                x = blk(x)
        return x


class VGGFeaturesW(nn.Module):
    def __init__(self, cfg, batch_norm=False):
        super().__init__()
        layers, in_ch = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(in_ch, v, 3, padding=1))
            layers += [nn.BatchNorm2d(v)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            in_ch = v
        self.features = nn.Sequential(*layers)
        self.batch_norm = batch_norm
        self.n_layers = sum(v != "M" for v in cfg)
        self.kernel_sizes = [3 if v != "M" else 2 for v in cfg]
        self.strides = [1 if v != "M" else 2 for v in cfg]
        self.paddings = [1 if v != "M" else 0 for v in cfg]

    def forward(self, x):
        return self.features(x)


class OldTorchBackend:
    """What torch <= 1.3 stored in every module's `_backend`: it pickles as a call to a torch function."""

    def __reduce__(self):
        from torch.nn.backends import thnn

        return thnn._get_thnn_function_backend, ()


def as_old_torch_pickle(net: nn.Module) -> None:
    for module in net.modules():
        module.__dict__["_backend"] = OldTorchBackend()


def regular_add_on(in_ch, dim):
    return nn.Sequential(nn.Conv2d(in_ch, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid())


class PPNetW(nn.Module):
    """model.PPNet's attributes; the identity is a plain tensor, outside the state dict."""

    def __init__(self, features, in_ch, prototype_shape, num_classes, activation="log", add_on=None, img_size=32):
        super().__init__()
        self.img_size = img_size
        self.prototype_shape = prototype_shape
        self.num_prototypes = prototype_shape[0]
        self.num_classes = num_classes
        self.epsilon = 1e-4
        self.prototype_activation_function = activation
        self.prototype_class_identity = torch.zeros(self.num_prototypes, num_classes)
        for j in range(self.num_prototypes):
            self.prototype_class_identity[j, j // (self.num_prototypes // num_classes)] = 1
        self.proto_layer_rf_info = [2, 16, 100, 8.0]
        self.features = features
        self.add_on_layers = add_on if add_on is not None else regular_add_on(in_ch, prototype_shape[1])
        self.prototype_vectors = nn.Parameter(torch.rand(prototype_shape))
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)
        self.last_layer = nn.Linear(self.num_prototypes, num_classes, bias=False)
        nn.init.normal_(self.last_layer.weight)

    def latent(self, x):
        return self.add_on_layers(self.features(x))


class TESNetW(PPNetW):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_prototypes_per_class = self.num_prototypes // self.num_classes


class L2Conv2DW(nn.Module):
    def __init__(self, num_prototypes, num_features, w1, h1):
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.randn(num_prototypes, num_features, w1, h1))


class BranchW(nn.Module):
    def __init__(self, index, l, r):
        super().__init__()
        self._index = index
        self.l = l
        self.r = r
        self._log_probabilities = False


class LeafW(nn.Module):
    def __init__(self, index, num_classes):
        super().__init__()
        self._index = index
        self._dist_params = nn.Parameter(torch.randn(num_classes) * 3, requires_grad=False)
        self._log_probabilities = False
        self._kontschieder_normalization = False


class ProtoTreeW(nn.Module):
    """prototree.prototree.ProtoTree: a preorder-numbered tree and the pickled `_out_map`."""

    def __init__(self, mods, features, in_ch, num_classes, depth=2, dim=4, seed=0):
        super().__init__()
        self._num_classes = num_classes
        counter = iter(range(2 ** (depth + 1)))

        def build(level):
            index = next(counter)
            if level == depth:
                return mods.Leaf(index, num_classes)
            left = build(level + 1)
            return mods.Branch(index, left, build(level + 1))

        self._root = build(0)
        branches = [m for m in self.modules() if isinstance(m, mods.Branch)]
        order = torch.randperm(len(branches), generator=torch.Generator().manual_seed(seed))
        self.num_features = dim
        self.num_prototypes = len(branches)
        self.prototype_shape = (1, 1, dim)
        self._parents = {}
        self._net = features
        self._add_on = nn.Sequential(nn.Conv2d(in_ch, dim, 1, bias=False), nn.Sigmoid())
        self._log_probabilities = False
        self._kontschieder_normalization = False
        self._kontschieder_train = False
        self._out_map = {b: int(j) for b, j in zip(branches, order)}  # arbitrary, as the original's set order
        self.prototype_layer = mods.L2Conv2D(self.num_prototypes, dim, 1, 1)

    def distances(self, x):
        """(B, P, h, w) non-squared L2 distance, patch by patch."""
        z = self._add_on(self._net(x))
        p = self.prototype_layer.prototype_vectors[:, :, 0, 0]
        d = torch.zeros(z.shape[0], p.shape[0], z.shape[2], z.shape[3])
        for b in range(z.shape[0]):
            for j in range(p.shape[0]):
                for r in range(z.shape[2]):
                    for c in range(z.shape[3]):
                        d[b, j, r, c] = torch.sqrt(((z[b, :, r, c] - p[j]) ** 2).sum() + 1e-14)
        return d

    def forward(self, x):
        """Probabilities (B, C): at each branch, right with s = exp(-min d) of its prototype."""
        s = torch.exp(-self.distances(x).amin(dim=(2, 3)))

        def out(node):
            if hasattr(node, "_dist_params"):
                p = node._dist_params
                dist = p / p.sum() if node._kontschieder_normalization else torch.softmax(p, dim=0)
                return dist.expand(x.shape[0], -1)
            ps = s[:, self._out_map[node]][:, None]
            return (1 - ps) * out(node.l) + ps * out(node.r)

        return out(self._root)


LAYOUTS = {
    "protopnet": {"model": {"PPNet": PPNetW},
                  "resnet_features": {"ResNet_features": ResNetFeaturesW, "BasicBlock": BasicBlockW,
                                      "Bottleneck": BottleneckW},
                  "vgg_features": {"VGG_features": VGGFeaturesW}},
    "tesnet": {"model": {"TESNet": TESNetW},
               "models.resnet_features": {"ResNet_features": ResNetFeaturesW, "BasicBlock": BasicBlockW,
                                          "Bottleneck": BottleneckW}},
    "prototree": {"prototree.prototree": {"ProtoTree": ProtoTreeW}, "prototree.branch": {"Branch": BranchW},
                  "prototree.leaf": {"Leaf": LeafW}, "util.l2conv": {"L2Conv2D": L2Conv2DW},
                  "features.resnet_features": {"ResNet_features": ResNetFeaturesW, "BasicBlock": BasicBlockW,
                                               "Bottleneck": BottleneckW}},
}


LAYOUTS["protovit"] = VIT_LAYOUT


class Namespace:
    pass


@contextlib.contextmanager
def original_modules(root: Path, family: str | dict):
    """Import throwaway modules named as in the original repository; remove them on exit.

    `family`: a name in LAYOUTS, or a layout of its own ({dotted module: {class name: base class}}).
    Yields a namespace with every class by its original name (`mods.PPNet`, `mods.BasicBlock`).
    """
    layout = LAYOUTS[family] if isinstance(family, str) else family
    mods = Namespace()
    for dotted, classes in layout.items():
        file = root / (dotted.replace(".", "/") + ".py")
        file.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"from {base.__module__} import {base.__name__} as _{name}" for name, base in classes.items()]
        lines += [f"class {name}(_{name}):\n    pass" for name in classes]
        file.write_text("\n".join(lines) + "\n")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        for dotted, classes in layout.items():
            module = importlib.import_module(dotted)
            for name in classes:
                setattr(mods, name, getattr(module, name))
        yield mods
    finally:
        sys.path.remove(str(root))
        tops = {dotted.split(".")[0] for dotted in layout}
        for name in [n for n in sys.modules if n.split(".")[0] in tops]:
            del sys.modules[name]
        importlib.invalidate_caches()


class PrototypeChooserW(nn.Module):
    """ProtoPool's model.PrototypeChooser (saved as {'model_state_dict', 'epoch'}, never pickled whole)."""

    def __init__(self, features, in_ch, num_prototypes, num_descriptive, num_classes, depth=4,
                 use_thresh=True, use_last_layer=True):
        super().__init__()
        self.num_classes, self.num_descriptive, self.epsilon = num_classes, num_descriptive, 1e-4
        if use_thresh:
            self.alfa = nn.Parameter(torch.randn(1, num_classes, num_descriptive))
        self.proto_presence = nn.Parameter(torch.randn(num_classes, num_prototypes, num_descriptive))
        self.features = features
        self.add_on_layers = nn.Sequential(nn.Conv2d(in_ch, depth, 1), nn.Sigmoid())
        self.prototype_vectors = nn.Parameter(torch.rand(num_prototypes, depth, 1, 1))
        self.ones = nn.Parameter(torch.ones(num_prototypes, depth, 1, 1), requires_grad=False)
        self.use_last_layer = use_last_layer
        self.last_layer = nn.Linear(num_classes * num_descriptive, num_classes, bias=False) if use_last_layer \
            else nn.Identity()


class NonNegLinearW(nn.Module):
    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.normalization_multiplier = nn.Parameter(torch.ones(1) * 2)
        self.bias = nn.Parameter(torch.rand(out_features)) if bias else None


class PIPNetW(nn.Module):
    """pipnet.pipnet.PIPNet; saved wrapped in nn.DataParallel as {'model_state_dict', ...}."""

    def __init__(self, net, num_prototypes, num_classes, num_features=0, in_ch=None, bias=False):
        super().__init__()
        self._num_features, self._num_classes, self._num_prototypes = num_features, num_classes, num_prototypes
        self._net = net
        conv = [nn.Conv2d(in_ch, num_prototypes, 1)] if num_features else []
        self._add_on = nn.Sequential(*conv, nn.Softmax(dim=1))
        self._pool = nn.Sequential(nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten())
        self._classification = NonNegLinearW(num_prototypes, num_classes, bias)
        self._multiplier = self._classification.normalization_multiplier


def pipnet_convnext(widths, depths, threshold):
    """torchvision ConvNeXt with PIP-Net's changes: no pooling/classifier, stride 1 where in_channels > threshold."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    nxt = list(widths[1:]) + [None]
    net = ConvNeXt([CNBlockConfig(w, n, d) for w, n, d in zip(widths, nxt, depths)])
    net.avgpool, net.classifier = nn.Identity(), nn.Identity()
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.stride[0] == 2 and module.in_channels > threshold:
            module.stride = tuple(s // 2 for s in module.stride)
    return net
