"""A deliberately straightforward, per-sample WKD-L (SPEC §1), used as the oracle of the fast batched form.

For each sample: drop the target row and column of ``M``, take the softmax of the remaining ``C − 1`` logits, run the
released Sinkhorn iterations (with both ``+1e-8`` terms) on the ``(C−1)×(C−1)`` problem, form the plan ``P`` and sum
``P ∘ M``. Slow on purpose (a Python loop over the batch, one small kernel per sample): it is also the baseline of
``benchmarks/bench_wkd_logit.py``. :func:`reference_wkd_logit_loss_batched` is the same per-sample algorithm with the
``B`` reduced problems stacked into ``B×(C−1)×(C−1)`` tensors (the layout of the released code), a second baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_sinkhorn_plan(
    a: Tensor, b: Tensor, cost: Tensor, eps: float, iters: int, stabilizer: float = 1e-8
) -> Tensor:
    """Plan of one reduced problem: ``a``, ``b`` of length n, ``cost`` n×n; released iteration order."""
    kernel = torch.exp(-cost / eps)
    u = torch.full_like(a, 1.0 / a.shape[0])
    v = b
    for _ in range(iters):
        v = b / (kernel.t() @ u + stabilizer)
        u = a / (kernel @ v + stabilizer)
    return u[:, None] * kernel * v[None, :]


def reference_wkd_logit_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    cost: Tensor,
    temperature: float,
    eps: float = 0.05,
    iters: int = 10,
    stabilizer: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """``(L_t, W)`` computed sample by sample. ``cost`` is the sharpened C×C ``D``; ``target`` holds class indices."""
    num_classes = student_logits.shape[1]
    cost_m = torch.relu(cost) + 1e-8
    p_t = F.softmax(teacher_logits.detach(), dim=1)
    log_p_s = F.log_softmax(student_logits, dim=1)
    target_terms, wd_terms = [], []
    for k in range(student_logits.shape[0]):
        y = int(target[k])
        keep = torch.tensor([c for c in range(num_classes) if c != y], device=student_logits.device)
        target_terms.append(-p_t[k, y] * log_p_s[k, y])
        a = F.softmax(student_logits[k, keep] / temperature, dim=0)
        b = F.softmax(teacher_logits[k, keep].detach() / temperature, dim=0)
        m = cost_m[keep][:, keep]
        plan = reference_sinkhorn_plan(a, b, m, eps, iters, stabilizer)
        wd_terms.append((plan * m).sum())
    return torch.stack(target_terms).mean(), torch.stack(wd_terms).mean()


def reference_wkd_logit_loss_batched(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    cost: Tensor,
    temperature: float,
    eps: float = 0.05,
    iters: int = 10,
    stabilizer: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """As :func:`reference_wkd_logit_loss`, with the reduced problems stacked into B×(C−1)×(C−1) tensors."""
    batch, num_classes = student_logits.shape
    cost_m = torch.relu(cost) + 1e-8
    target_mask = F.one_hot(target, num_classes).bool()
    keep = torch.arange(num_classes, device=student_logits.device).expand(batch, -1)[~target_mask]
    keep = keep.view(batch, num_classes - 1)
    y = target.unsqueeze(1)
    l_t = -(F.softmax(teacher_logits.detach(), dim=1).gather(1, y) * F.log_softmax(student_logits, dim=1).gather(1, y))
    a = F.softmax(student_logits.gather(1, keep) / temperature, dim=1)
    b = F.softmax(teacher_logits.detach().gather(1, keep) / temperature, dim=1)
    m = cost_m[keep[:, :, None], keep[:, None, :]]
    kernel = torch.exp(-m / eps)
    u = torch.full_like(a, 1.0 / (num_classes - 1))
    v = b
    for _ in range(iters):
        v = b / (torch.bmm(u.unsqueeze(1), kernel).squeeze(1) + stabilizer)
        u = a / (torch.bmm(kernel, v.unsqueeze(2)).squeeze(2) + stabilizer)
    plan = u.unsqueeze(2) * kernel * v.unsqueeze(1)
    return l_t.mean(), (plan * m).sum(dim=(1, 2)).mean()
