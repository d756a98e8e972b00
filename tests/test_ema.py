"""EMA against an average computed by hand, and swapping the averaged weights in and out."""
import pytest
import torch
from torch import nn

from scoreops.training.ema import EMA


def _model():
    return nn.Sequential(nn.Linear(5, 4), nn.GroupNorm(2, 4), nn.Linear(4, 3)).double()


@pytest.mark.parametrize("decay", [0.999, 0.6])
def test_matches_hand_computed_average(decay):
    model = _model()
    ema = EMA(model, decay=decay)
    want = None
    for n in range(15):  # with decay 0.6 the warm-up cap (1+n)/(10+n) passes 0.6 at n = 4
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update_parameters(model)
        current = [p.detach().clone() for p in model.parameters()]
        if want is None:
            want = current
        else:
            d = min(decay, (1 + n) / (10 + n))
            want = [d * w + (1 - d) * c for w, c in zip(want, current)]
        for got, expected in zip(ema.module.parameters(), want):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert int(ema.n_averaged) == 15


def test_swapped_into_loads_average_then_restores():
    model = _model()
    ema = EMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5).add_(1.0)
        ema.update_parameters(model)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(own["0.weight"], ema.module.state_dict()["0.weight"])
    x = torch.randn(2, 5, dtype=torch.float64)
    with ema.swapped_into(model) as swapped:
        assert swapped is model
        for k, v in ema.module.state_dict().items():
            assert torch.equal(model.state_dict()[k], v)
        torch.testing.assert_close(model(x), ema(x))
    for k, v in own.items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(KeyError), ema.swapped_into(model):
        raise KeyError("raised inside")
    for k, v in own.items():
        assert torch.equal(model.state_dict()[k], v)


def test_average_differs_from_weights_after_updates():
    model = _model()
    ema = EMA(model)
    ema.update_parameters(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update_parameters(model)
    # n = 1: decay 2/11, so the average moved 9/11 of the way.
    torch.testing.assert_close(model[0].weight - ema.module[0].weight,
                               torch.full_like(model[0].weight, 2 / 11))


def test_bad_decay_is_refused():
    for decay in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            EMA(_model(), decay=decay)


def test_integer_buffers_follow_the_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model, 0.999)
    for _ in range(3):
        model(torch.randn(8, 3))
        ema.update_parameters(model)
    assert int(ema.module[1].num_batches_tracked) == 3 == int(model[1].num_batches_tracked)
