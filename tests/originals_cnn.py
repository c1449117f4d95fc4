"""Stand-ins of the original model classes of Deformable ProtoPNet, ST-ProtoPNet and ProtoPShare,
with the attributes their constructors set (read from each repository's model.py), for
writing checkpoints in their on-disk formats (see tests/originals.py). No code is copied:
each class only sets what the original pickles or saves.
"""

from __future__ import annotations

import torch
from torch import nn

from originals import BasicBlockW, BottleneckW, PPNetW, ResNetFeaturesW, VGGFeaturesW, regular_add_on


class DeformablePPNetW(nn.Module):
    """jdonnelly36/Deformable-ProtoPNet's model.PPNet: the attributes its __init__ sets."""

    def __init__(self, features, in_ch, prototype_shape, num_classes, add_on="upsample", hidden=4,
                 using_deform=True, img_size=32):
        super().__init__()
        num, dim, kh, kw = prototype_shape
        self.img_size = img_size
        self.prototype_shape = prototype_shape
        self.num_prototypes, self.num_classes = num, num_classes
        self.m = 0.1
        self.using_deform = using_deform
        self.relu_on_cos = True
        self.incorrect_class_connection = -0.5
        self.input_vector_length = 64
        self.n_eps_channels = 2
        self.epsilon_val = 1e-4
        self.prototype_dilation = (2, 2)
        self.prototype_padding = (1, 1)
        self.topk_k = 1
        self.prototype_class_identity = torch.zeros(num, num_classes)
        self.num_prototypes_per_class = num // num_classes
        for j in range(num):
            self.prototype_class_identity[j, j // self.num_prototypes_per_class] = 1
        self.proto_layer_rf_info = [8, 4, 35, 2.0]
        self.features = features
        if add_on == "upsample":
            self.add_on_layers = nn.Upsample(scale_factor=2, mode="bilinear")
        elif add_on == "identity":
            self.add_on_layers = nn.Sequential(nn.Identity())
        else:
            self.add_on_layers = regular_add_on(in_ch, dim)
        self.prototype_vectors = nn.Parameter(torch.rand(prototype_shape))
        self.deformable_conv_out_channels = 2 * kh * kw
        self.deformable_conv_hidden_channels = hidden
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)
        if not hidden:
            self.conv_offset = nn.Sequential(nn.Conv2d(dim + 2, 2 * kh * kw, (kh + 1, kw + 1), padding=1, bias=False))
        else:
            self.conv_offset = nn.Sequential(nn.Conv2d(dim + 2, hidden, (kh + 2, kw + 2), padding=1), nn.ReLU(),
                                             nn.Conv2d(hidden, 2 * kh * kw, (kh, kw), padding=1))
        self.last_layer = nn.Linear(num, num_classes, bias=False)
        nn.init.normal_(self.last_layer.weight)
        # the original starts from zero offsets; trained ones move the parts: these move them 1-2 cells
        gen = torch.Generator().manual_seed(7)
        for conv, std in zip([m for m in self.conv_offset if isinstance(m, nn.Conv2d)], (0.01, 0.3)):
            conv.weight.data.copy_(torch.randn(conv.weight.shape, generator=gen) * (std if hidden else 0.02))
            if conv.bias is not None:
                conv.bias.data.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.5)

    def latent(self, x):
        return self.add_on_layers(self.features(x))


class STProtoPNetW(nn.Module):
    """cwangrun/ST-ProtoPNet's model.STProtoPNet (full/ or cropped/), which it saves as a state dict."""

    def __init__(self, features, in_ch, prototype_shape, num_classes, variant="full", upsample=True):
        super().__init__()
        dim = prototype_shape[1]
        self.img_size, self.prototype_shape, self.num_classes = 32, prototype_shape, num_classes
        self.num_prototypes = prototype_shape[0]
        self.epsilon, self.prototype_activation_function = 1e-4, "log"
        self.features = features
        for name in ("trivial", "support"):
            if variant == "full":
                layers = [nn.Upsample(scale_factor=2, mode="bilinear") if upsample else nn.Identity(),
                          nn.Conv2d(in_ch, dim, 1), nn.Conv2d(dim, dim, 1)]
            else:
                layers = [nn.Conv2d(in_ch, dim, 1), nn.Tanh(), nn.Conv2d(dim, dim, 1), nn.Tanh()]
            setattr(self, f"add_on_layers_{name}", nn.Sequential(*layers))
        self.prototype_vectors_trivial = nn.Parameter(torch.rand(prototype_shape))
        self.prototype_vectors_support = nn.Parameter(torch.rand(prototype_shape))
        self.last_layer_trivial = nn.Linear(self.num_prototypes, num_classes, bias=False)
        self.last_layer_support = nn.Linear(self.num_prototypes, num_classes, bias=False)
        nn.init.normal_(self.last_layer_trivial.weight)
        nn.init.normal_(self.last_layer_support.weight)
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)


class SharePPNetW(PPNetW):
    """gmum/ProtoPShare's model.PPNet as its own constructor builds it: ProtoPNet's attributes plus its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.take_best_prototypes = True
        self.thresholds = torch.zeros((1, self.num_prototypes))
        self.t = 0.8
        self.binarizer = nn.Hardtanh(min_val=self.t, max_val=1 + self.t)


def share(net, kept, merged):
    """ProtoPShare's join bookkeeping (proto_join.py): prototype `merged` joins `kept`.

    The kept column of the last layer becomes the sum of both, its class row the union; the
    merged one is removed everywhere. in_features stays as it was and prototype_shape becomes a
    torch.Size, as in the original."""
    left = [j for j in range(net.last_layer.weight.shape[1]) if j != merged]
    with torch.no_grad():
        weight = net.last_layer.weight.data.clone()
        weight[:, kept] = weight[:, [kept, merged]].sum(1)
        identity = net.prototype_class_identity.clone()
        identity[kept] = identity[[kept, merged]].max(0)[0]
        net.last_layer.weight = nn.Parameter(weight[:, left])
        net.prototype_class_identity = identity[left]
        net.prototype_vectors = nn.Parameter(net.prototype_vectors[left])
        net.ones = nn.Parameter(net.ones[left])
    net.num_prototypes = len(left)
    net.prototype_shape = net.prototype_vectors.shape


BACKBONES = {"resnet_features": {"ResNet_features": ResNetFeaturesW, "BasicBlock": BasicBlockW,
                                 "Bottleneck": BottleneckW},
             "vgg_features": {"VGG_features": VGGFeaturesW}}
DEFORMABLE = {"model": {"PPNet": DeformablePPNetW}, **BACKBONES}
PROTOPSHARE = {"model": {"PPNet": SharePPNetW}, **BACKBONES}
