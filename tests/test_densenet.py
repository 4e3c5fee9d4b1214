"""cxr.learn.densenet against torchvision's densenet121: names, shapes, initialisation, arithmetic, files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cxr.findings import FINDINGS
from cxr.learn.densenet import densenet121_features
from cxr.learn.models import build_model, modern_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torchvision_densenet() -> nn.Module:
    from torchvision.models import densenet121

    torch.manual_seed(0)
    return densenet121(weights=None)


def test_the_module_tree_and_state_dict_are_torchvision_s(torchvision_densenet):
    ours, theirs = densenet121_features(), torchvision_densenet.features
    assert isinstance(ours, nn.Sequential)
    assert [name for name, _ in ours.named_children()] == [name for name, _ in theirs.named_children()]
    leaves = {name: repr(m) for name, m in theirs.named_modules() if not list(m.children())}
    assert {name: repr(m) for name, m in ours.named_modules() if not list(m.children())} == leaves
    assert len(leaves) == 4 + 58 * 6 + 3 * 4 + 1  # stem, 58 dense layers, 3 transitions, norm5
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert {k: v.shape for k, v in ours_state.items()} == {k: v.shape for k, v in theirs_state.items()}


def test_the_initialisation_follows_torchvision_s_rules():
    torch.manual_seed(0)
    features = densenet121_features()
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 58 * 2 + 3
    for conv in convs:  # kaiming_normal_: std sqrt(2 / fan_in), where PyTorch's default gives sqrt(1 / (3 fan_in))
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
        assert conv.bias is None
    for norm in (m for m in features.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize("train", [False, True])
def test_with_torchvision_s_weights_the_output_is_torchvision_s(train):
    from torchvision.models import densenet121

    theirs = densenet121(weights=None).features  # not the fixture: a forward in train mode updates its statistics
    state = theirs.state_dict()
    for name, value in state.items():  # in place, so theirs too: statistics other than the defaults test eval
        if name.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif name.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    ours = densenet121_features()
    ours.load_state_dict(state, strict=True)
    torch.manual_seed(1)
    batch = torch.randn(2, 3, 64, 64)
    ours.train(train)
    theirs.train(train)
    with torch.no_grad():
        got, want = ours(batch), theirs(batch)
    assert got.shape == (2, 1024, 2, 2)
    assert torch.allclose(got, want, atol=1e-6)
    if train:  # the running statistics moved the same way
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_torchvision_densenet_file_loads_into_the_body(torchvision_densenet, tmp_path):
    state = torchvision_densenet.state_dict()
    assert any(k.startswith("classifier.") for k in state)  # the whole file, head included
    torch.save(state, tmp_path / "densenet121.pth")
    body = build_model("densenet121", weights=str(tmp_path / "densenet121.pth")).body.state_dict()
    assert set(body) == {k.removeprefix("features.") for k in state if k.startswith("features.")}
    for key, value in body.items():
        assert torch.equal(value, state["features." + key]), key

    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    assert "features.denseblock4.denselayer16.conv.2.weight" in legacy  # torchvision's files before 0.3
    torch.save(legacy, tmp_path / "densenet121-legacy.pth")
    body = build_model("densenet121", weights=str(tmp_path / "densenet121-legacy.pth")).body.state_dict()
    for key, value in legacy.items():
        if key.startswith("features."):
            assert torch.equal(body[modern_key(key).removeprefix("features.")], value), key

    del state["features.norm5.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"does not fit DenseNet121: missing \['features.norm5.weight'\]"):
        build_model("densenet121", weights=str(tmp_path / "short.pth"))


def test_a_densenet_builds_and_predicts_without_torchvision():
    probe = (
        "import json, sys, torch\n"
        "from cxr.learn.models import build_model\n"
        "model = build_model('densenet121').eval()\n"
        "with torch.no_grad():\n"
        "    shape = list(model(torch.rand(1, 1, 64, 64)).shape)\n"
        "print(json.dumps([shape, sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [[1, len(FINDINGS)], []]
