"""Global batches across resumes: the order after a resume is the order without one."""

from __future__ import annotations

from types import SimpleNamespace

from tunelab.data.distributed import GlobalBatchSampler, data_position, make_loader


def _epochs(sampler: GlobalBatchSampler, n: int) -> list[list[list[int]]]:
    return [list(sampler) for _ in range(n)]


def test_a_resumed_loader_continues_the_uninterrupted_order():
    # 10 items, batches of 3: 4 batches per epoch, a fresh shuffle every epoch
    straight = _epochs(GlobalBatchSampler(10, 3, shuffle=True, seed=7), 4)
    assert straight[0] != straight[1]
    # resumed in epoch 2 after 1 batch: the rest of epoch 2, then epoch 3, as without the cut
    loader = make_loader(list(range(10)), 3, True, 7, collate_fn=list, resume_at=(2, 1))
    resumed = [list(loader.batch_sampler), list(loader.batch_sampler)]
    assert resumed == [straight[2][1:], straight[3]]


def test_position_saved_after_an_epochs_last_batch_points_at_the_next_epoch():
    # Lightning has run 8 steps of 4 per epoch but not yet counted epoch 1 as finished
    trainer = SimpleNamespace(
        num_training_batches=4, global_step=8, accumulate_grad_batches=1, current_epoch=1
    )
    assert data_position(trainer) == {"epoch": 2, "batches_done": 0}
    trainer.current_epoch, trainer.global_step = 2, 9
    assert data_position(trainer) == {"epoch": 2, "batches_done": 1}
