"""Exact, resumable sampling: epoch-seeded order, per-sample seeded augmentation, DDP splits, rebuilt loaders."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from wkd_lightning.data import FashionMNISTDataModule
from wkd_lightning.data.sampling import EpochSampler, SeededDataset, make_loader, sample_seed, sample_seeds


class NoisyDataset(Dataset):
    """Sample i is ``i`` plus torch-RNG noise and a random crop/flip of a small image: any RNG leak shows up."""

    def __init__(self, n: int = 24) -> None:
        self.n = n
        self.images = torch.arange(n * 3 * 8 * 8, dtype=torch.uint8).reshape(n, 3, 8, 8)
        self.transform = v2.Compose([v2.RandomCrop(8, padding=2), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(self.images[index]).float() + torch.rand(())
        return image, torch.tensor(index)


def items(sampler):
    return list(iter(sampler))


def test_same_seed_and_epoch_give_the_same_order_and_seeds():
    a, b = EpochSampler(50, shuffle=True, seed=3), EpochSampler(50, shuffle=True, seed=3)
    a.set_epoch(4), b.set_epoch(4)
    assert items(a) == items(b)
    indices = [i for i, _ in items(a)]
    assert sorted(indices) == list(range(50)) and indices != list(range(50))
    assert all(0 <= s < 2**63 for _, s in items(a))
    assert len({s for _, s in items(a)}) == 50


def test_different_epochs_give_different_orders_and_seeds():
    sampler = EpochSampler(50, shuffle=True, seed=3)
    first = items(sampler)
    sampler.set_epoch(1)
    second = items(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    seeds_first, seeds_second = dict(first), dict(second)
    assert all(seeds_first[i] != seeds_second[i] for i in range(50))
    sampler.set_epoch(0)
    assert items(sampler) == first  # set_epoch then iterate reproduces the epoch


def test_order_is_distributed_samplers_and_seeds_are_the_documented_function():
    ours, theirs = EpochSampler(37, shuffle=True, seed=5), DistributedSampler(range(37), 1, 0, shuffle=True, seed=5)
    ours.set_epoch(2), theirs.set_epoch(2)
    pairs = items(ours)
    assert [i for i, _ in pairs] == list(theirs)
    assert [s for _, s in pairs] == [sample_seed(5, 2, i) for i, _ in pairs]
    assert sample_seeds(-1, 7, [0, 2**40]) == [sample_seed(-1, 7, 0), sample_seed(-1, 7, 2**40)]
    assert len({sample_seed(0, 1, 0), sample_seed(1, 0, 0), sample_seed(0, 0, 1)}) == 3  # no seed+epoch collision


@pytest.mark.parametrize("n", [40, 41])
def test_two_replicas_partition_the_indices(n):
    ranks = [EpochSampler(n, shuffle=True, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    parts = [items(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == (n + 1) // 2
    indices = [i for part in parts for i, _ in part]
    assert set(indices) == set(range(n))
    assert len(indices) == n + n % 2  # padding repeats n % 2 indices (the first of the permutation)
    # a sample's seed depends on (seed, epoch, index) only, not on the replica layout
    single = EpochSampler(n, shuffle=True, seed=1)
    single.set_epoch(3)
    assert dict(p for part in parts for p in part) == dict(items(single))


def test_evaluation_sampler_is_in_order_and_pads_across_ranks():
    assert items(EpochSampler(5, shuffle=False, with_seeds=False)) == [0, 1, 2, 3, 4]
    parts = [items(EpochSampler(5, shuffle=False, num_replicas=2, rank=r, with_seeds=False)) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3, 0]]
    dropped = [items(EpochSampler(5, shuffle=False, num_replicas=2, rank=r, drop_last=True)) for r in range(2)]
    assert [[i for i, _ in part] for part in dropped] == [[0, 2], [1, 3]]


def test_seeded_items_are_identical_across_calls_and_leave_the_global_rng_alone():
    dataset = SeededDataset(NoisyDataset())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first, second = dataset[(5, 1234)], dataset[(5, 1234)]
    assert torch.equal(first[0], second[0]) and int(first[1]) == 5
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(dataset[(5, 1235)][0], first[0])
    image, label = dataset[5]  # plain index: unseeded, still works
    assert image.shape == (3, 8, 8) and int(label) == 5


def _epoch(loader: DataLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b))


def test_augmentation_does_not_depend_on_the_number_of_workers():
    dataset = SeededDataset(NoisyDataset())
    kwargs = dict(batch_size=5, shuffle=True, seed=7, pin_memory=False)
    in_process = _epoch(make_loader(dataset, num_workers=0, **kwargs), 1)
    torch.manual_seed(123)  # the global RNG must not matter either
    with_workers = _epoch(make_loader(dataset, num_workers=2, persistent_workers=False, **kwargs), 1)
    assert _same(in_process, with_workers)


def test_rebuilt_loader_reproduces_the_epoch_like_a_resumed_run():
    dataset = SeededDataset(NoisyDataset())
    kwargs = dict(batch_size=4, shuffle=True, num_workers=0, seed=11)
    uninterrupted = make_loader(dataset, **kwargs)
    epoch0, epoch1 = _epoch(uninterrupted, 0), _epoch(uninterrupted, 1)
    torch.manual_seed(999)
    resumed = make_loader(dataset, **kwargs)  # a fresh process after loading last.ckpt of epoch 0
    assert _same(_epoch(resumed, 1), epoch1)
    assert not _same(epoch0, epoch1)
    assert _same(_epoch(resumed, 0), epoch0)


def test_make_loader_splits_over_the_trainers_ranks():
    class FakeTrainer:
        world_size, global_rank = 2, 1

    trainer = FakeTrainer()
    train = make_loader(SeededDataset(NoisyDataset(7)), batch_size=2, shuffle=True, num_workers=0, trainer=trainer)
    assert isinstance(train.sampler, DistributedSampler)
    assert (train.sampler.num_replicas, train.sampler.rank, len(train.sampler)) == (2, 1, 4)
    val = make_loader(NoisyDataset(7), batch_size=3, shuffle=False, num_workers=0, trainer=trainer)
    labels = torch.cat([y for _, y in val]).tolist()
    assert labels == [1, 3, 5]  # rank 1 of 2, in order, not padded


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_evaluation_shards_partition_the_dataset_exactly(world_size):
    """Evaluation over N ranks sees every sample once (no padding duplicates), so synchronised metrics are exact."""
    seen = []
    for rank in range(world_size):
        sampler = EpochSampler(10, shuffle=False, num_replicas=world_size, rank=rank, pad=False, with_seeds=False)
        shard = list(sampler)
        assert len(shard) == len(sampler)
        seen += shard
    assert sorted(seen) == list(range(10))
    padded = [i for r in range(3) for i in EpochSampler(10, shuffle=False, num_replicas=3, rank=r, with_seeds=False)]
    assert len(padded) == 12  # training shards are padded to equal length (DDP needs equal step counts)


def test_seeded_loading_leaves_cuda_generators_alone(monkeypatch):
    """Seeding a sample's augmentation must not reseed CUDA (torch.manual_seed would, on every device)."""

    def forbidden(*args):
        raise AssertionError("a CUDA generator was reseeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    dataset = SeededDataset(NoisyDataset(4))
    first, again = dataset[(2, 12345)], dataset[(2, 12345)]
    torch.testing.assert_close(first[0], again[0])  # still seeded: the same sample seed gives the same sample


class BatchRecorder(L.LightningModule):
    """A linear classifier that records every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, 10)
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, x.clone(), y.clone()))
        return torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(data_dir, root, epochs: int, num_workers: int, ckpt_path=None) -> list:
    model = BatchRecorder()
    data = FashionMNISTDataModule(str(data_dir), batch_size=16, num_workers=num_workers, seed=4)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[ModelCheckpoint(save_last=True)],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_lightning_resume_from_last_ckpt_sees_the_uninterrupted_batches(fashion_dir, tmp_path):
    uninterrupted = _fit(fashion_dir, tmp_path / "full", epochs=2, num_workers=0)
    _fit(fashion_dir, tmp_path / "part", epochs=1, num_workers=0)
    # workers prefetch as soon as Lightning creates the iterator, before its first set_epoch on resume
    resumed = _fit(fashion_dir, tmp_path / "part", 2, 2, ckpt_path=tmp_path / "part" / "checkpoints" / "last.ckpt")
    expected = [batch for batch in uninterrupted if batch[0] == 1]
    assert len(resumed) == len(expected) == 5
    assert all(e == r and torch.equal(x, u) and torch.equal(y, v) for (e, x, y), (r, u, v) in zip(expected, resumed))
    first_epoch = [batch for batch in uninterrupted if batch[0] == 0]
    assert not torch.equal(first_epoch[0][2], expected[0][2])


def test_return_index_appends_each_training_samples_index(fashion_dir):
    data = FashionMNISTDataModule(data_dir=str(fashion_dir), batch_size=16, num_workers=0, return_index=True)
    data.setup("fit")
    seen = []
    for x, y, index in data.train_dataloader():
        assert x.shape[0] == y.shape[0] == index.shape[0]
        assert torch.equal(y, data.train_set.dataset.labels[index])  # the index points at this very sample
        seen += index.tolist()
    assert sorted(seen) == list(range(len(data.train_set)))
    assert len(next(iter(data.val_dataloader()))) == 2  # evaluation batches stay (x, y)
