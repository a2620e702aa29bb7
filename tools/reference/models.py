"""PyTorch reference of llrtrain's models: same architectures, parameter names and batch-norm buffers, so that
`model.load_state_dict(safetensors.torch.load_file(path))` loads an llrtrain checkpoint (filters OIHW, float32).

    from models import make_model
    model = make_model("wrn-28-10", act="softplus")

Inputs are images in [0, 1], NCHW as usual in PyTorch; the CIFAR-10 normalisation happens inside the model.
"""
import json
import re
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def activation(name):
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        return nn.Softplus()
    raise ValueError(f"unknown activation {name!r}")


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Pre-activation Wide-ResNet block; the projection shortcut takes the block's first activation."""

    def __init__(self, in_planes, out_planes, stride, act):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = activation(act)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = activation(act)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes and stride == 1
        self.convShortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        h = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return (x if self.equal else self.convShortcut(a)) + h


class NetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride, act):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1, act) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen=10, classes=10, act="relu"):
        super().__init__()
        assert (depth - 4) % 6 == 0
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, w[0], w[1], 1, act)
        self.block2 = NetworkBlock(n, w[1], w[2], 2, act)
        self.block3 = NetworkBlock(n, w[2], w[3], 2, act)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.relu = activation(act)
        self.fc = nn.Linear(w[3], classes)

    def forward(self, x):
        h = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        h = self.relu(self.bn1(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, act):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.act = activation(act)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        a = self.act(self.bn1(x))
        skip = self.shortcut(a) if hasattr(self, "shortcut") else x
        h = self.conv2(self.act(self.bn2(self.conv1(a))))
        return h + skip


class PreActResNet18(nn.Module):
    def __init__(self, classes=10, act="relu"):
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        layers, in_planes = [], 64
        for i, planes in enumerate([64, 128, 256, 512]):
            blocks = []
            for j in range(2):
                blocks.append(PreActBlock(in_planes, planes, 2 if (j == 0 and i > 0) else 1, act))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.act = activation(act)
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        h = self.conv1(self.normalize(x))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        h = self.act(self.bn(h))
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def read_metadata(path):
    """The __metadata__ of a safetensors file (llrtrain writes the model name, activation and classes there)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def make_model(name, act="relu", classes=10):
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if m:
        return WideResNet(int(m.group(1)), int(m.group(2)), classes, act)
    if name == "preact-rn18":
        return PreActResNet18(classes, act)
    m = re.fullmatch(r"resnet-(50|101|152)", name)
    if m:
        return make_imagenet_resnet(int(m.group(1)), act, classes)
    raise ValueError(f"unknown model {name!r}")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_imagenet_resnet(depth, act="relu", classes=1000):
    """torchvision's resnet50/101/152 with llrtrain's input normalisation (inputs in [0, 1]) and activation."""
    import torchvision

    net = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101,
           152: torchvision.models.resnet152}[depth](weights=None, num_classes=classes)
    if act == "softplus":
        for m in net.modules():
            for name, child in m.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(m, name, nn.Softplus())

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
            self.net = net

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

        # The checkpoint holds the torchvision names without the "net." prefix.
        def load_state_dict(self, sd, strict=True):
            return self.net.load_state_dict(sd, strict=strict)

    return Wrapped()
