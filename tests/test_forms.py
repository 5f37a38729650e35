"""benchmarks/bench_forms.py's alternative export forms (channel-padded, concatenated once, concat-free) compute the
eval model's function at every width, in the channel counts and operators each form promises: a benchmark of a form
that is not the same function would measure nothing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers import randomize_
from timm.utils import reparameterize_model

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


@pytest.fixture(scope='module')
def bench_forms():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_forms
    finally:
        sys.path.remove(str(BENCH))
    return bench_forms


@pytest.mark.parametrize('name', ['ghostnet_050', 'ghostnet_100', 'ghostnet_130'])
def test_every_alternative_form_is_the_eval_model(bench_forms, name):
    model = randomize_(timm.create_model(name), seed=0).eval()
    deploy = reparameterize_model(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        for form in bench_forms.FORMS[1:]:
            alt = bench_forms.alternative_form(deploy, form)
            assert (alt(x) - ref).abs().max().item() <= 1e-4, form
            convs = [m for m in alt.modules() if isinstance(m, torch.nn.Conv2d)]
            if form == 'concat_free':
                # each cheap operation a depthwise conv with channel multiplier 2, and no concat left in the graph
                assert sum(c.out_channels == 2 * c.groups and c.in_channels == c.groups for c in convs) == 32
                program = torch.export.export(alt, (x,))
                assert 'aten.cat.default' not in {str(n.target) for n in program.graph.nodes}
            else:
                # every feature map inside the blocks a multiple of 16 channels (the stem's input and the head's
                # output excepted)
                assert all(c.out_channels % 16 == 0 for c in convs[:-1]), form


def test_padding_adds_zero_channels_only(bench_forms):
    """The padded form's extra channels are zeros and its real channels the deploy model's: ghostnet_050's first block
    adds its 8-channel input back to the two 4-channel halves of its output, so its stem writes the halves' layout,
    each half padded to 16 channels."""
    model = randomize_(timm.create_model('ghostnet_050'), seed=0).eval()
    deploy = reparameterize_model(model)
    alt = bench_forms.alternative_form(deploy, 'padded16')
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stem, ref = alt.conv_stem(x), deploy.conv_stem(x)
    assert (ref.shape[1], stem.shape[1]) == (8, 32)
    real = torch.tensor([0, 1, 2, 3, 16, 17, 18, 19])
    assert (stem[:, real] - ref).abs().max().item() <= 1e-6
    pads = torch.tensor([i for i in range(32) if i not in real.tolist()])
    assert stem[:, pads].abs().max().item() == 0
