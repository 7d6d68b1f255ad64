"""Semantic sanity score of a cost matrix: do nearest neighbours fall in the same known group of classes?

For a C×C cost ``D`` and a grouping of the classes (CIFAR-100's 20 superclasses, Fashion-MNIST's tops and footwear),
each class's nearest neighbour is the other class with the smallest cost. The **score** is the share of classes
whose nearest neighbour belongs to their own group; the **chance** level is the expected share if each class's
nearest neighbour were drawn uniformly from the other ``C − 1`` classes, ``(g_k − 1)/(C − 1)`` for a class in a
group of ``g_k``, averaged over the same classes.

Conventions:

* Only classes with at least one group-mate are scored (a singleton can never match, so counting it would only cap
  the score below 1 without saying anything about the matrix); chance is averaged over the same classes. The
  nearest neighbour of a scored class may still be a singleton (a miss).
* Ties: when several classes share the smallest cost (within ``tie_tolerance``), a class counts as the fraction
  of its tied nearest neighbours that are group-mates, i.e. the expected value under random tie-breaking; so a
  constant (``uniform``) matrix scores exactly its chance level.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: Fashion-MNIST groups (our choice). Tops are worn on the upper body and are what a Fashion-MNIST classifier confuses
#: most; footwear is the other obvious family. Trouser, Dress and Bag are singletons: a dress is neither clearly a top
#: nor trousers, and counting it as a top would reward a matrix for a debatable grouping.
FASHION_MNIST_GROUPS: dict[str, tuple[str, ...]] = {
    "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
    "footwear": ("Sandal", "Sneaker", "Ankle boot"),
}

#: CIFAR-100's 20 superclasses (coarse labels, in the dataset's coarse-label order 0..19), each with its 5 fine
#: classes, as listed in the dataset's documentation (Krizhevsky, 2009), with the fine-label names of its meta file.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

#: Fine class name → superclass name (100 entries).
CIFAR100_FINE_TO_COARSE: dict[str, str] = {
    fine: coarse for coarse, members in CIFAR100_SUPERCLASSES.items() for fine in members
}

#: Known groupings by name, recognised from a dataset's class names by :func:`known_groups`.
KNOWN_GROUPINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion_mnist": FASHION_MNIST_GROUPS,
    "cifar100_superclasses": CIFAR100_SUPERCLASSES,
}
_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_GROUPING_CLASSES = {"fashion_mnist": _FASHION_MNIST_CLASSES, "cifar100_superclasses": tuple(CIFAR100_FINE_TO_COARSE)}


@dataclass(frozen=True)
class SemanticScore:
    """The result of :func:`semantic_score`.

    Attributes:
        score: share of scored classes whose nearest neighbour is a group-mate (ties count fractionally).
        chance: the expected share for uniformly random nearest neighbours.
        num_scored: classes with at least one group-mate (the denominator of both shares).
        num_classes: C.
        nearest: for every class, the index of its nearest neighbour (the first one on ties).
        matches: for every class, the (fractional) match in ``[0, 1]``; ``None`` for unscored singletons.
    """

    score: float
    chance: float
    num_scored: int
    num_classes: int
    nearest: tuple[int, ...]
    matches: tuple[float | None, ...]

    def __str__(self) -> str:
        return (
            f"semantic score {self.score:.3f} (chance {self.chance:.3f}, "
            f"{self.num_scored} of {self.num_classes} classes scored)"
        )

    def as_dict(self) -> dict[str, float | int]:
        """Plain numbers (for metadata saved with ``torch.save`` and loaded with ``weights_only=True``)."""
        return {
            "score": self.score,
            "chance": self.chance,
            "num_scored": self.num_scored,
            "num_classes": self.num_classes,
        }


def semantic_score(cost: Tensor, groups: Sequence[Hashable], *, tie_tolerance: float = 1e-6) -> SemanticScore:
    """Share of classes whose nearest neighbour under ``cost`` is in the same group, beside its chance level.

    Args:
        cost: a C×C cost matrix (only off-diagonal entries are used; it need not be symmetric: row k is class k's).
        groups: a group label per class (e.g. from :func:`group_labels`); classes alone in their label are singletons.
        tie_tolerance: costs within this of a row's minimum count as tied nearest neighbours.

    Raises:
        ValueError: ``cost`` is not a finite C×C matrix with C ≥ 2, ``groups`` has the wrong length, or no group has
            two classes (the score would be undefined).
    """
    if not isinstance(cost, Tensor) or cost.dim() != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"semantic_score needs a C×C cost matrix with C >= 2, got {shape}.")
    num_classes = cost.shape[0]
    groups = list(groups)
    if len(groups) != num_classes:
        raise ValueError(f"semantic_score: {len(groups)} group labels for a {num_classes}×{num_classes} cost matrix.")
    cost = cost.detach().double().cpu()
    if not torch.isfinite(cost).all():
        raise ValueError("semantic_score: the cost matrix has non-finite entries.")
    sizes = Counter(groups)
    if max(sizes.values()) < 2:
        raise ValueError("semantic_score: every class is alone in its group, so no nearest neighbour can match.")
    index = {label: i for i, label in enumerate(sizes)}
    group_ids = torch.tensor([index[g] for g in groups])
    off = cost.clone().fill_diagonal_(float("inf"))
    row_min = off.min(dim=1, keepdim=True).values
    tied = off <= row_min + tie_tolerance
    same = group_ids[:, None] == group_ids[None, :]
    fraction = ((tied & same).sum(dim=1) / tied.sum(dim=1)).tolist()
    scored = [k for k in range(num_classes) if sizes[groups[k]] >= 2]
    score = sum(fraction[k] for k in scored) / len(scored)
    chance = sum((sizes[groups[k]] - 1) / (num_classes - 1) for k in scored) / len(scored)
    return SemanticScore(
        score=float(score),
        chance=float(chance),
        num_scored=len(scored),
        num_classes=num_classes,
        nearest=tuple(off.argmin(dim=1).tolist()),
        matches=tuple(fraction[k] if sizes[groups[k]] >= 2 else None for k in range(num_classes)),
    )


def normalise_name(name: str) -> str:
    """Class-name key for matching: lower case, runs of spaces/hyphens/slashes/underscores → one underscore."""
    return re.sub(r"[\s\-/_]+", "_", str(name).strip().lower())


def group_labels(class_names: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    """A group label per class: the group listing it, or the class's own name (a singleton) if none does.

    Names are matched after :func:`normalise_name`, so ``"aquarium fish"`` matches ``"aquarium_fish"``.

    Raises:
        ValueError: a group names a class that is not among ``class_names``, or a class is in two groups.
    """
    position = {normalise_name(name): i for i, name in enumerate(class_names)}
    labels: list[str | None] = [None] * len(class_names)
    for group, members in groups.items():
        for member in members:
            key = normalise_name(member)
            if key not in position:
                raise ValueError(
                    f"group {group!r} names class {member!r}, which is not one of the dataset's classes "
                    f"({', '.join(map(str, class_names[:20]))}{', ...' if len(class_names) > 20 else ''})."
                )
            i = position[key]
            if labels[i] is not None:
                raise ValueError(f"class {class_names[i]!r} is in two groups: {labels[i]!r} and {group!r}.")
            labels[i] = f"group:{group}"
    return [label if label is not None else f"class:{name}" for label, name in zip(labels, class_names)]


def known_groups(class_names: Sequence[str]) -> tuple[str, list[str]] | None:
    """Recognise a dataset by its class names and return ``(grouping name, group label per class)``, or ``None``.

    Known: Fashion-MNIST (:data:`FASHION_MNIST_GROUPS`) and CIFAR-100 (:data:`CIFAR100_SUPERCLASSES`), in any class
    order.
    """
    keys = {normalise_name(name) for name in class_names}
    if len(keys) != len(class_names):
        return None
    for name, classes in _GROUPING_CLASSES.items():
        if keys == {normalise_name(c) for c in classes}:
            return name, group_labels(class_names, KNOWN_GROUPINGS[name])
    return None
