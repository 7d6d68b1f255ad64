"""Category-interrelation (IR) cost matrices ``D`` for WKD-L, computed from per-class teacher features (SPEC §3).

Every method maps ``class_features`` (``class_features[i]``: an ``n_i × d`` tensor of features of class ``i``) to a
C×C distance matrix: symmetric, zero diagonal, fp32, clamped to its method's range. All pairwise work is batched: one
GEMM per *block* of classes (never a Python loop over class pairs), each class's self term computed once, and the
``n×n`` Gram form used where it is the cheaper one.

Methods (``cost_matrix(..., method=...)``):

* ``cka_paired`` — the **released** linear-CKA cost, reproduced faithfully (and nearly non-semantic, see
  :func:`cka_paired`);
* ``cov_align`` — pairing-free alignment of class covariances (ours, a deviation from the release);
* ``class_mean_cosine`` — ``1 −`` cosine of the class-mean features (ours);
* ``uniform`` — 1 between any two classes (ablation: WKD-L without category interrelations).

:func:`classifier_cosine` (``1 −`` cosine of the teacher's classifier weight rows, the paper's "fc" option) needs no
features and is a separate helper.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.hooks import resolve_module

KNOWN_METHODS = ("cka_paired", "cov_align", "class_mean_cosine", "uniform")
KNOWN_FORMS = ("auto", "gram", "cov")
#: Target width (block classes × d) of the column blocks multiplied in one GEMM by ``cka_paired``'s d×d form.
_BLOCK_COLUMNS = 1024
#: Target rows per block of ``cov_align``'s Gram form and of ``cka_paired``'s Gram batches.
_BLOCK_ROWS = 4096
#: Target size (numbers) of ``cov_align``'s zero-padded block buffer in the d×d form (256 MiB in fp32).
_BLOCK_ELEMENTS = 2**26


def cost_matrix(
    class_features: Sequence[Tensor], method: str, *, form: str = "auto", block_size: int | None = None
) -> Tensor:
    """The C×C category-distance matrix ``D`` of ``method`` from per-class features.

    Args:
        class_features: ``class_features[i]`` is an ``n_i × d`` tensor of features of class ``i`` (all classes share
            ``d``; a ``C × n × d`` tensor works too). Floating-point inputs are computed in their own precision
            (fp64 stays fp64), others in fp32, on the tensors' device.
        method: one of :data:`KNOWN_METHODS`.
        form: how ``cka_paired`` and ``cov_align`` evaluate their cross terms: ``"gram"`` (``n×n`` Gram matrices),
            ``"cov"`` (``d×d`` matrices) or ``"auto"`` (the cheaper one; see the methods' docstrings). The result is
            the same up to rounding.
        block_size: classes per block in the blocked GEMMs (default: sized from ``d`` and ``n``); only speed and
            memory depend on it.

    Returns:
        ``D``: C×C, fp32, symmetric, exactly zero on the diagonal; in ``[0, 1]`` for ``cka_paired``, ``cov_align``
        and ``uniform``, in ``[0, 2]`` for ``class_mean_cosine``.

    Raises:
        ValueError: unknown ``method`` or ``form``, fewer than 2 classes, a class that is empty or not a 2-D
            tensor, classes with different ``d``, non-finite features, or features for which the method is undefined
            (a class with constant features, a zero class mean).
    """
    if method not in KNOWN_METHODS:
        raise ValueError(
            f"unknown IR method {method!r}. Known methods: {', '.join(KNOWN_METHODS)} "
            "(and classifier_cosine(linear), which takes the teacher's classifier instead of features)."
        )
    if form not in KNOWN_FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(KNOWN_FORMS)}.")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}.")
    features = check_class_features(class_features)
    if method == "cka_paired":
        return cka_paired(features, form=form, block_size=block_size)
    if method == "cov_align":
        return cov_align(features, form=form, block_size=block_size)
    if method == "class_mean_cosine":
        return class_mean_cosine(features)
    return _finish(torch.ones(len(features), len(features), device=features[0].device), upper=1.0)


def check_class_features(class_features: Sequence[Tensor]) -> list[Tensor]:
    """Validate per-class features and return them as a list of floating-point ``n_i × d`` tensors (no copies).

    Raises:
        ValueError: see :func:`cost_matrix`.
    """
    if isinstance(class_features, Tensor):
        if class_features.dim() != 3:
            raise ValueError(
                f"class_features as one tensor must be C × n × d, got shape {tuple(class_features.shape)}; "
                "otherwise pass a list of n_i × d tensors, one per class."
            )
        class_features = list(class_features.unbind(0))
    try:
        features = list(class_features)
    except TypeError:
        raise ValueError(
            f"class_features must be a sequence of n_i × d tensors, one per class; got {type(class_features).__name__}."
        ) from None
    if len(features) < 2:
        raise ValueError(f"an IR cost matrix needs features of at least 2 classes, got {len(features)}.")
    d = None
    for i, x in enumerate(features):
        if not isinstance(x, Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"class {i}: expected an n_i × d feature tensor, got {shape}.")
        if x.shape[0] == 0:
            raise ValueError(
                f"class {i} is empty (0 feature rows): every class needs samples. Check that the data covers all "
                "classes and that max_per_class is not 0."
            )
        if d is None:
            d = x.shape[1]
        elif x.shape[1] != d:
            raise ValueError(
                f"class {i} has feature dimension {x.shape[1]}, but class 0 has {d}: all classes must match."
            )
        if x.shape[1] == 0:
            raise ValueError(f"class {i} has feature dimension 0.")
        if not x.is_floating_point():
            x = features[i] = x.float()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = features[i] = x.float()
        # One cheap pass: a NaN or inf anywhere makes the sum non-finite (an overflowing sum is re-checked exactly).
        if not torch.isfinite(x.sum()) and (bad := int((~torch.isfinite(x)).sum())):
            raise ValueError(
                f"class {i} has {bad} non-finite feature values (NaN or inf); the teacher or the data is broken."
            )
    return features


def cka_paired(features: Sequence[Tensor], *, form: str = "auto", block_size: int | None = None) -> Tensor:
    """The **released** WKD cost: ``D_ij = 1 − CKA(X_i, X_j)`` with rows of different classes paired by index.

    Faithful to the release (SPEC §3): every class is truncated to its first ``n = min_i n_i`` rows, the columns of
    each truncated class are centred, and with linear CKA ``CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``.

    **Why it is nearly non-semantic.** CKA compares two representations *of the same examples*: row ``k`` of ``X``
    and row ``k`` of ``Y`` must describe one input. Here row ``k`` of class ``i`` and row ``k`` of class ``j`` are
    unrelated images (or, with feature maps, the same spatial position of unrelated images), so the cross term
    ``YᵀX`` is a sum of outer products of independent samples. Its size is governed by how many directions each class
    spreads over (and by structure shared by *all* classes, such as a per-position pattern), not by how alike the two
    classes are; the resulting matrix is close to constant off the diagonal, and its nearest neighbours agree with
    semantic groups at about chance level (CIFAR-100 superclasses). It also changes when the rows within a class are
    reordered. Use ``cov_align`` or ``class_mean_cosine`` for a cost that carries class structure.

    Computation: with ``n < d`` (ImageNet logits: ~730 × 1000) the Gram form ``‖YᵀX‖²_F = ⟨XXᵀ, YYᵀ⟩_F``
    (one ``n×n`` Gram per class, then one GEMM between the stacked Grams); otherwise the ``d×d`` form, one GEMM
    ``Z_Iᵀ Z_J`` per pair of class blocks ``I ≤ J`` on a single centred copy of the truncated features, whose
    ``d×d`` sub-blocks give the cross terms and, on the diagonal blocks, the self terms (each computed once).

    Args:
        features: per-class ``n_i × d`` features (see :func:`cost_matrix`, which validates them).
        form: ``"auto"`` (Gram iff ``n < d``), ``"gram"`` or ``"cov"`` (the ``d×d`` form).
        block_size: classes per block (default: ``d`` × classes ≈ 1024 columns in the d×d form).

    Raises:
        ValueError: fewer than 2 rows after truncation, or a class whose truncated features are constant.
    """
    n = min(x.shape[0] for x in features)
    num_classes, d = len(features), features[0].shape[1]
    if n < 2:
        raise ValueError(
            f"cka_paired truncates every class to the smallest class size, which is {n} row here; centred features "
            "of one row are all zero. Give every class at least 2 feature rows."
        )
    dtype = features[0].dtype if features[0].dtype == torch.float64 else torch.float32
    use_gram = form == "gram" or (form == "auto" and n < d)
    if use_gram:
        block = block_size or max(1, min(num_classes, _BLOCK_ROWS // n))
        grams = torch.empty(num_classes, n * (n + 1) // 2, dtype=dtype, device=features[0].device)
        for start in range(0, num_classes, block):  # one batched GEMM per block of classes: the Grams XXᵀ
            z = _centre(torch.stack([x[:n].to(dtype) for x in features[start : start + block]]))
            grams[start : start + len(z)] = _sym_vec(torch.bmm(z, z.transpose(1, 2)))
            del z
        inner = (grams @ grams.T).double()  # all ⟨X_iX_iᵀ, X_jX_jᵀ⟩ = ‖X_jᵀX_i‖²_F at once; diagonal: self terms
        del grams
    else:
        block = block_size or max(1, min(num_classes, _BLOCK_COLUMNS // d or 1))
        # One centred copy of the truncated features, laid out n × C × d so that a block of classes is an n × (b·d)
        # view (row stride C·d) that BLAS reads in place.
        stacked = torch.empty(n, num_classes, d, dtype=dtype, device=features[0].device)
        for i, x in enumerate(features):
            rows = x[:n].to(dtype)
            torch.sub(rows, rows.mean(dim=0, keepdim=True), out=stacked[:, i])
        inner = torch.empty(num_classes, num_classes, dtype=torch.float64, device=stacked.device)
        starts = list(range(0, num_classes, block))
        for a, i0 in enumerate(starts):  # pairs of blocks (I ≤ J), not pairs of classes
            i1 = min(i0 + block, num_classes)
            z_i = stacked[:, i0:i1].reshape(n, (i1 - i0) * d)
            for j0 in starts[a:]:
                j1 = min(j0 + block, num_classes)
                cross = z_i.T @ stacked[:, j0:j1].reshape(n, (j1 - j0) * d)
                sums = cross.view(i1 - i0, d, j1 - j0, d).double().square().sum(dim=(1, 3))
                inner[i0:i1, j0:j1] = sums
                inner[j0:j1, i0:i1] = sums.T
                del cross
        del stacked
    return _finish(1.0 - _normalise_inner(inner, "cka_paired"), upper=1.0)


def cov_align(features: Sequence[Tensor], *, form: str = "auto", block_size: int | None = None) -> Tensor:
    """Pairing-free covariance alignment: ``D_ij = 1 − tr(Σ_iΣ_j) / (‖Σ_i‖_F ‖Σ_j‖_F)`` (ours; not in the release).

    ``Σ_i`` is the covariance of class ``i``'s rows (all ``n_i`` of them, no truncation). The score only depends on
    each class's covariance, so it is invariant to the order of rows within a class and needs no pairing of
    examples across classes; it is the cosine between the two covariance matrices, in ``[0, 1]`` because
    covariances are positive semi-definite. The ``1/(n_i − 1)`` factors cancel.

    Two exact forms:

    * ``"cov"``: ``Σ_i`` per class (batched GEMMs over blocks of classes of similar size, zero-padded), then all
      inner products ``⟨Σ_i, Σ_j⟩_F`` in one GEMM of the stacked upper triangles. Cost ``≈ Σ_i n_i d² + C² d²/4``,
      memory ``C·d²/2`` numbers plus one block buffer.
    * ``"gram"``: ``tr(Σ_iΣ_j) ∝ ‖X_i X_jᵀ‖²_F`` with centred ``X``, an ``n_i×n_j`` cross-Gram per pair, computed
      as one GEMM per pair of row blocks. Cost ``≈ (Σ_i n_i)² d / 2``; cheaper only when classes have very few rows
      (``n² ≲ d``), e.g. a handful of images per class with wide features.

    ``"auto"`` picks the form with fewer multiply-adds. (Unlike ``cka_paired``, "Gram when ``n < d``" is not the
    right rule here: without pairing, the Gram form needs a cross-Gram for every pair of classes, while the ``d×d``
    form needs one covariance per class; at ImageNet shape the Gram form would cost ~300× more.)

    Raises:
        ValueError: a class with fewer than 2 rows, or with constant features (zero covariance).
    """
    counts = [x.shape[0] for x in features]
    num_classes, d = len(features), features[0].shape[1]
    small = [i for i, c in enumerate(counts) if c < 2]
    if small:
        raise ValueError(f"cov_align needs at least 2 feature rows per class for a covariance; classes {small} have 1.")
    dtype = features[0].dtype if features[0].dtype == torch.float64 else torch.float32
    device = features[0].device
    total = sum(counts)
    cov_cost = total * d * d + num_classes * num_classes * d * d / 4
    gram_cost = (total * total + sum(c * c for c in counts)) / 2 * d
    use_gram = form == "gram" or (form == "auto" and gram_cost < cov_cost)
    if not use_gram:
        vecs = torch.empty(num_classes, d * (d + 1) // 2, dtype=dtype, device=device)
        # Classes sorted by size and centred into a zero-padded b × n_max × d buffer, one batched GEMM per block:
        # padded zero rows add nothing to ZᵀZ, and few large GEMMs beat many small ones on a busy CPU.
        by_size = sorted(range(num_classes), key=counts.__getitem__)
        block = block_size or max(1, min(16, _BLOCK_ELEMENTS // (max(counts) * d)))
        for start in range(0, num_classes, block):
            members = by_size[start : start + block]
            buffer = torch.zeros(len(members), counts[members[-1]], d, dtype=dtype, device=device)
            for k, i in enumerate(members):
                rows = features[i].to(dtype)
                torch.sub(rows, rows.mean(dim=0, keepdim=True), out=buffer[k, : counts[i]])
            vecs[members] = _sym_vec(torch.bmm(buffer.transpose(1, 2), buffer))  # the self terms, once per class
            del buffer
        inner = (vecs @ vecs.T).double()
        del vecs
    else:
        # Blocks of consecutive classes holding about _BLOCK_ROWS rows (a class never splits).
        if block_size is not None:
            bounds = [*range(0, num_classes, block_size), num_classes]
        else:
            bounds, rows = [0], 0
            for i, c in enumerate(counts):
                if rows and rows + c > _BLOCK_ROWS:
                    bounds.append(i)
                    rows = 0
                rows += c
            bounds.append(num_classes)
        blocks = list(itertools.pairwise(bounds))
        inner = torch.empty(num_classes, num_classes, dtype=torch.float64, device=device)
        for a, (i0, i1) in enumerate(blocks):  # pairs of blocks (I ≤ J), not pairs of classes
            rows_i, seg_i = _centred_rows(features[i0:i1], dtype)
            for j0, j1 in blocks[a:]:
                rows_j, seg_j = (rows_i, seg_i) if j0 == i0 else _centred_rows(features[j0:j1], dtype)
                squared = (rows_i @ rows_j.T).double().square_()
                sums = seg_i.T @ squared @ seg_j  # sum over each class's sub-block
                inner[i0:i1, j0:j1] = sums
                inner[j0:j1, i0:i1] = sums.T
                del squared
    return _finish(1.0 - _normalise_inner(inner, "cov_align"), upper=1.0)


def class_mean_cosine(features: Sequence[Tensor]) -> Tensor:
    """``D_ij = 1 − cos(μ_i, μ_j)`` of the class-mean features (ours; SPEC §8's semantic cost). Range ``[0, 2]``.

    Raises:
        ValueError: a class whose mean feature is the zero vector (its cosine is undefined).
    """
    dtype = features[0].dtype if features[0].dtype == torch.float64 else torch.float32
    means = torch.stack([x.to(dtype).mean(dim=0) for x in features]).double()
    norms = means.norm(dim=1)
    zero = torch.nonzero(norms == 0).flatten().tolist()
    if zero:
        raise ValueError(
            f"class_mean_cosine: classes {zero} have a zero mean feature, so their cosine is undefined. "
            "Use another layer or method."
        )
    unit = means / norms[:, None]
    return _finish(1.0 - unit @ unit.T, upper=2.0)


def final_linear(model: nn.Module, path: str | None = None, *, owner: str = "teacher", hint: str = "") -> nn.Linear:
    """The classifier of ``model``: the ``nn.Linear`` at dotted ``path``, or its last ``nn.Linear`` (``path`` None).

    Args:
        model: the network.
        path: dotted module path of the classifier, or None for the last ``nn.Linear``.
        owner: whose network it is, for the messages (``"teacher"``, ``"student"``).
        hint: how the caller sets ``path`` (an option name), appended to the messages.

    Raises:
        ValueError: no such module, it is not an ``nn.Linear``, or the model has none.
    """
    if path is None:
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ValueError(f"the {owner} ({type(model).__name__}) has no nn.Linear classifier; {hint}")
        return linears[-1]
    module = resolve_module(model, path, owner=owner)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"the {owner}'s classifier {path!r} is a {type(module).__name__}, not an nn.Linear; {hint}")
    return module


def classifier_cosine(linear: nn.Linear | Tensor) -> Tensor:
    """``D_ij = 1 − cos(w_i, w_j)`` of the rows of the teacher's classifier weight (the paper's "fc" IR). Range [0, 2].

    Args:
        linear: the teacher's final ``nn.Linear`` (C outputs), or its C×d weight tensor.

    Raises:
        ValueError: not a linear layer / 2-D weight, fewer than 2 classes, non-finite or all-zero weight rows.
    """
    weight = linear.weight if isinstance(linear, nn.Linear) else linear
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"classifier_cosine takes the teacher's final nn.Linear (or its C×d weight), got {type(linear).__name__}"
            + (f" of shape {tuple(weight.shape)}" if isinstance(weight, Tensor) else "")
            + "."
        )
    weight = weight.detach().double()
    if weight.shape[0] < 2:
        raise ValueError(f"classifier_cosine needs at least 2 classes (weight rows), got {weight.shape[0]}.")
    if not torch.isfinite(weight).all():
        raise ValueError("classifier_cosine: the classifier weight has non-finite values.")
    norms = weight.norm(dim=1)
    zero = torch.nonzero(norms == 0).flatten().tolist()
    if zero:
        raise ValueError(f"classifier_cosine: classifier rows {zero} are all zero, so their cosine is undefined.")
    unit = weight / norms[:, None]
    return _finish(1.0 - unit @ unit.T, upper=2.0)


def _centre(x: Tensor) -> Tensor:
    """Subtract the column means (over dim −2), out of place."""
    return x - x.mean(dim=-2, keepdim=True)


def _sym_vec(matrices: Tensor) -> Tensor:
    """Batch of symmetric m×m matrices → b × m(m+1)/2 vectors whose dot products are Frobenius inner products.

    The upper triangle with off-diagonal entries scaled by √2: half the memory and half the GEMM of flattening.
    """
    flat_index, scale = _triangle(matrices.shape[-1], matrices.device, matrices.dtype)
    return matrices.flatten(1)[:, flat_index] * scale


@functools.lru_cache(maxsize=4)
def _triangle(m: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Flat indices of the upper triangle of an m×m matrix and the weights (1 on the diagonal, √2 off it)."""
    rows, cols = torch.triu_indices(m, m, device=device)
    scale = torch.where(rows == cols, 1.0, 2.0**0.5).to(dtype)
    return rows * m + cols, scale


def _centred_rows(features: Sequence[Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Centred rows of several classes stacked (N × d) and the N × b one-hot matrix of their classes (fp64)."""
    rows = torch.cat([_centre(x.to(dtype)) for x in features])
    labels = torch.repeat_interleave(
        torch.arange(len(features), device=rows.device),
        torch.tensor([x.shape[0] for x in features], device=rows.device),
    )
    return rows, F.one_hot(labels, len(features)).double()


def _normalise_inner(inner: Tensor, method: str) -> Tensor:
    """Turn a Gram matrix of inner products ⟨A_i, A_j⟩ into cosines ⟨A_i, A_j⟩ / (‖A_i‖ ‖A_j‖)."""
    self_terms = inner.diagonal()
    constant = torch.nonzero(self_terms <= 0).flatten().tolist()
    if constant:
        raise ValueError(
            f"{method}: classes {constant} have constant features (zero variance after centring), so the "
            "alignment is undefined. Use another layer, more samples, or another method."
        )
    norms = self_terms.sqrt()
    return inner / norms[:, None] / norms[None, :]


def _finish(distance: Tensor, upper: float) -> Tensor:
    """Symmetrise, clamp to ``[0, upper]``, zero the diagonal exactly, cast to fp32."""
    distance = ((distance + distance.T) / 2).clamp_(0.0, upper).float()
    return distance.fill_diagonal_(0.0)
