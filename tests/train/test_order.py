"""Data order: seeded per-epoch permutations, the partial tail dropped, positions that resume exactly, and
the per-rank split of a global batch."""

from __future__ import annotations

from slimtune.train.order import BatchOrder, DataPosition, micro_batches


def test_each_epoch_is_a_fresh_permutation_without_the_partial_tail() -> None:
    order = BatchOrder(10, 4, seed=5)
    assert order.steps_per_epoch == 2
    epoch0 = order.next_global() + order.next_global()
    epoch1 = order.next_global() + order.next_global()
    assert order.position == DataPosition(1, 8)
    assert len(set(epoch0)) == len(set(epoch1)) == 8 and epoch0 != epoch1
    assert set(epoch0) <= set(range(10))
    assert BatchOrder(10, 4, seed=6).next_global() != BatchOrder(10, 4, seed=5).next_global()


def test_a_saved_position_continues_the_same_stream() -> None:
    full = BatchOrder(13, 3, seed=1)
    stream = [full.next_global() for _ in range(9)]
    part = BatchOrder(13, 3, seed=1)
    for _ in range(5):
        part.next_global()
    resumed = BatchOrder(13, 3, seed=1, position=DataPosition.from_dict(part.position.to_dict()))
    assert [resumed.next_global() for _ in range(4)] == stream[5:]


def test_ranks_split_each_micro_batch_of_one_process() -> None:
    global_batch = list(range(100, 116))  # batch 4 x world 2 x accum 2
    single = micro_batches(global_batch, 8, 2, rank=0, world_size=1)
    ranks = [micro_batches(global_batch, 4, 2, rank=r, world_size=2) for r in range(2)]
    for k in range(2):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(single[k])
        assert not set(ranks[0][k]) & set(ranks[1][k])
    assert sorted(i for r in ranks for m in r for i in m) == global_batch
