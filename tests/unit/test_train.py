"""vss_core.train: the learning-rate schedule, steps per epoch, complete checkpoints, the shared run
directory check, a non-finite loss naming its step and samples, and each rank's own memory peak."""

import torch

from tests.helpers import prepare_all, uncached_config
from vss_core import data, train
from vss_core.errors import TrainingError


def test_warmup_then_cosine():
    f = train.lr_lambda(warmup_steps=4, total_steps=20)
    warm = [f(s) for s in range(5)]
    assert warm == sorted(warm) and warm[-1] == 1.0
    decay = [f(s) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True) and abs(decay[-1]) < 1e-9


def test_steps_per_epoch_and_rank_order_cover_the_data():
    assert train.steps_per_epoch(8, world_size=2, micro_batch=1, accumulation=1) == 4
    assert train.steps_per_epoch(8, world_size=2, micro_batch=1, accumulation=64) == 1
    a = data.rank_order(8, epoch=0, seed=1, rank=0, world_size=2, length=4)
    b = data.rank_order(8, epoch=0, seed=1, rank=1, world_size=2, length=4)
    assert sorted(a + b) == list(range(8))
    assert data.rank_order(3, 0, 0, 1, 2, length=4) == [data.rank_order(3, 0, 0, 1, 2, 1)[0]] * 4


def test_only_complete_checkpoints_are_trusted(tmp_path):
    for step, complete in [(2, True), (4, True), (6, False)]:
        d = tmp_path / f"step-{step}"
        d.mkdir()
        if complete:
            (d / train.COMPLETE).write_text("{}")
    (tmp_path / "tmp-step-8").mkdir()
    assert [s for s, _ in train.complete_checkpoints(tmp_path)] == [2, 4]
    removed = {p.name for p in train.remove_partial_checkpoints(tmp_path)}
    assert removed == {"step-6", "tmp-step-8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-4"]


class _OneRankDist:
    """deepspeed.comm's calls check_shared_run_dir makes, for one rank; `barrier` runs a hook."""

    def __init__(self, on_barrier=lambda: None) -> None:
        self.on_barrier = on_barrier

    def broadcast_object_list(self, objs, src):
        pass

    def barrier(self):
        self.on_barrier()

    def all_gather_object(self, out, obj):
        out[0] = obj


def test_a_run_directory_every_rank_sees_passes_and_one_it_does_not_fails_naming_the_host(tmp_path):
    import socket

    import pytest

    from vss_core.errors import TrainingError

    train.check_shared_run_dir(tmp_path, rank=0, world=1, dist=_OneRankDist())
    # what another node would see on its own local disk: not the token rank 0 wrote
    blind = _OneRankDist(on_barrier=lambda: (tmp_path / ".shared-dir-check").write_text('{"token": "other"}'))
    with pytest.raises(TrainingError, match=f"ranks on {socket.gethostname()} do not see") as err:
        train.check_shared_run_dir(tmp_path, rank=0, world=1, dist=blind)
    assert "training.output_dir on storage every node mounts" in str(err.value)


def test_a_rank_reports_its_own_peak_not_the_peak_of_the_process_that_started_it():
    # ru_maxrss survives fork + exec: a rank started by a big Prefect process would report that
    # process's size as its own peak and fail the plan check for memory it never used
    import subprocess
    import sys

    held = b"\x01" * (3 * 2**30)  # 3 GiB of written pages in this (the parent) process
    code = "from vss_core.train import peak_rss_bytes; import resource; print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    del held
    peak, ru_maxrss = (int(x) for x in out)
    assert ru_maxrss >= 3 * 2**30  # the kernel's inherited figure: what the old measure read
    assert 0 < peak < 2 * 2**30  # the child's own high-water mark (imports: ~1 GiB)


def test_a_non_finite_loss_names_the_step_and_the_samples(dataset_of_two, tiny_model_dir, tiny_codec_dir, tmp_path):
    out = tmp_path / "prep"
    prepare_all(dataset_of_two, uncached_config(dataset_of_two), tiny_model_dir, tiny_codec_dir, out)
    names = data.prepared_names(out)
    reduce_calls = []

    def all_reduce(t):  # one rank of two; the other rank (rank 1) found sample 1 bad
        reduce_calls.append(t.clone())
        t[1] += 2

    fine = train.nonfinite_samples(torch.tensor(0.5), [0], rank=0, world=2, micro_batch=1, all_reduce=lambda t: None)
    assert fine == []
    bad = train.nonfinite_samples(
        torch.tensor(float("nan")), [0], rank=0, world=2, micro_batch=1, all_reduce=all_reduce
    )
    assert bad == [0, 1] and reduce_calls[0].tolist() == [1.0, 0.0]
    err = train.nonfinite_loss_error(7, 12, 0, [names[i] for i in bad])
    assert isinstance(err, TrainingError)
    assert "not finite (NaN/Inf) at step 7/12" in str(err) and "sample(s) 01, 02" in str(err)
    assert "no adapter" in str(err)
