"""The sub-center AAM-softmax head (mlsv.models.head) with the inter-top-K penalty."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlsv.data.loader import speed_perturb_classes
from mlsv.models.head import SubCenterAAMSoftmax


def _head(**kw):
    torch.manual_seed(0)
    args = dict(scale=30.0, margin=0.3, sub_centers=3, top_k=5, penalty=0.06)
    args.update(kw)
    return SubCenterAAMSoftmax(8, 20, **args)


def test_margin_zero_topk_zero_is_scaled_cosine_cross_entropy():
    head = _head(margin=0.0, top_k=0, sub_centers=1)
    x, y = torch.randn(6, 8), torch.randint(0, 20, (6,))
    loss, logits = head(x, y)
    cos = F.normalize(x) @ F.normalize(head.weight).T
    torch.testing.assert_close(logits, 30 * cos)
    torch.testing.assert_close(loss, F.cross_entropy(30 * cos, y))


def test_sub_centers_take_the_max():
    head = _head(margin=0.0, top_k=0)
    x = torch.randn(4, 8)
    cos = (F.normalize(x) @ F.normalize(head.weight).T).view(4, 20, 3)
    torch.testing.assert_close(head.cosine(x), cos.amax(-1))


def test_target_gets_the_angular_margin():
    head = _head(top_k=0)
    x, y = torch.randn(5, 8), torch.randint(0, 20, (5,))
    _, logits = head(x, y)
    cos = head.cosine(x)
    theta = torch.acos(cos.gather(1, y[:, None]).squeeze(1))
    expected = torch.where(theta + 0.3 < math.pi, torch.cos(theta + 0.3), cos.gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(logits.gather(1, y[:, None]).squeeze(1) / 30, expected, atol=1e-5, rtol=0)


def test_penalty_raises_only_the_top_k_negatives():
    x, y = torch.randn(4, 8), torch.randint(0, 20, (4,))
    plain = _head(top_k=0)
    pen = _head(top_k=5)
    _, lp = plain(x, y)
    _, lk = pen(x, y)
    cos = pen.cosine(x).masked_fill(F.one_hot(y, 20).bool(), -2)
    top = cos.topk(5, dim=1).indices
    changed = lk != lp
    for i in range(4):
        assert set(changed[i].nonzero().flatten().tolist()) <= set(top[i].tolist())
        assert (lk[i, top[i]] >= lp[i, top[i]] - 1e-5).all()  # raised, never lowered
        assert lk[i, y[i]] == lp[i, y[i]]


def test_penalty_follows_the_margin_ramp():
    head = _head()
    head.set_margin(0.15)
    assert head.penalty == pytest.approx(0.03)
    head.set_margin(0.0)
    assert head.penalty == 0.0
    head.set_margin(0.5, penalty=0.0, top_k=0)
    assert head.top_k == 0 and head.margin == 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_loss(dtype):
    head = _head()
    x = torch.randn(6, 8).to(dtype)
    y = torch.randint(0, 20, (6,))
    # embeddings that coincide with a class centre: cos rounds to 1 in half precision
    x[0] = head.weight[y[0] * 3].detach().to(dtype)
    loss, logits = head(x, y)
    assert torch.isfinite(loss) and torch.isfinite(logits).all()
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()


def test_speed_perturb_classes():
    assert speed_perturb_classes(5994, [1.0, 1.0, 1.0, 0.9, 1.1]) == 17982
    assert speed_perturb_classes(10, [1.0]) == 10


def test_predictions_take_the_margin_but_not_the_penalty():
    """The accuracy in metrics.csv was the argmax of the penalised logits; the method predicts with the
    margin on the target only. Here the penalty lifts a negative above the target: the prediction stays."""
    head = SubCenterAAMSoftmax(2, 2, scale=30.0, margin=0.3, sub_centers=1, top_k=1, penalty=0.06)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [math.cos(1.33), math.sin(1.33)]]))
    x = torch.tensor([[math.cos(0.5), math.sin(0.5)]])  # 0.5 rad from class 0, 0.83 rad from class 1
    y = torch.tensor([0])
    loss, logits, predictions = head(x, y, return_predictions=True)
    assert logits.argmax(-1).item() == 1  # cos(0.83 - 0.06) > cos(0.5 + 0.3): penalised, class 1 looks best
    assert predictions.item() == 0  # cos(0.5 + 0.3) > cos(0.83): the method's prediction is right
    loss2, logits2 = head(x, y)
    assert torch.equal(loss, loss2) and torch.equal(logits, logits2)
