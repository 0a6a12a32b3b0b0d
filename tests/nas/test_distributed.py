"""Data-parallel training (nas.distributed): ranks are real processes started by torchrun, on CPU with gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.data import DeviceBatches
from nas.distributed import (
    DataParallel,
    DistributedError,
    GlobalBatchNorm2d,
    convert_batch_norm,
    from_environment,
    process_group,
)
from nas.train import train_and_evaluate

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from ddp_rank import run_settings  # noqa: E402


def _torchrun(ranks: int, *command: str, **options: object) -> subprocess.Popen:
    """``torchrun --nproc-per-node RANKS COMMAND`` on a free port of this host, in a fresh process group."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1]), "PYTHONFAULTHANDLER": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        environment.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *command],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        **options,
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """Waits for a torchrun (these take 5-20 s); one that hangs fails with every rank's stack in its message."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"torchrun still ran after {timeout} s: {_abort(process)[-6000:]}") from None
    return process.returncode, out, err


def _abort(process: subprocess.Popen) -> str:
    """Ends a torchrun that hangs and returns its stderr, where each rank has printed every thread's stack as it
    aborted (PYTHONFAULTHANDLER)."""
    for rank in _ranks_of(process):
        os.kill(rank, signal.SIGABRT)
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[1]


def test_two_ranks_reproduce_the_one_process_run(tmp_path: Path) -> None:
    spec, data, config = run_settings()
    alone = train_and_evaluate(spec, data, config, weights=tmp_path / "alone.pt")
    code, _, err = _finish(_torchrun(2, str(HERE / "ddp_rank.py"), str(tmp_path)))
    assert code == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["status"] == ranks[1]["status"] == "ok"
    one = np.array([epoch.loss for epoch in alone.history])
    two = np.array([epoch["loss"] for epoch in ranks[0]["history"]])
    assert [epoch["loss"] for epoch in ranks[1]["history"]] == list(two)  # every rank returns the global result
    assert ranks[1]["accuracy"] == ranks[0]["accuracy"]
    assert len(one) == len(two) == 24  # one global batch per epoch: a loss per step
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert ranks[0]["accuracy"] == alone.accuracy
    assert not (tmp_path / "weights-1.pt").exists()  # only rank 0 writes
    expected, got = torch.load(tmp_path / "alone.pt"), torch.load(tmp_path / "weights-0.pt")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name].float(), expected[name].float(), rtol=1e-4, atol=1e-5, msg=name)


def test_ranks_that_see_different_speeds_time_the_same_steps(tmp_path: Path) -> None:
    # Each rank sizes its timing windows from its own one-step estimate, and every step holds collectives: ranks
    # that estimate apart (rank 1 is "loaded" here) must still run one count, rank 0's. Before, one rank went on
    # timing while the other trained, and the run hung.
    code, _, err = _finish(_torchrun(2, str(HERE / "ddp_rank.py"), str(tmp_path), "--timed"))
    assert code == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["status"] == ranks[1]["status"] == "ok"
    assert ranks[0]["step_time_s"] > 0 and len(ranks[0]["history"]) == 2


def _train_command(directory: Path, *extra: str) -> list[str]:
    """A run with every per-rank draw on: progressive stages, RandAugment, mixup, dropout, stochastic depth, EMA."""
    return ["-m", "nas", "train", "tiny", "--data", "synthetic:num_images=240,num_classes=4,image_size=24",
            "--epochs", "5", "--batch-size", "32", "--threads", "1", "--sync-bn", "--seed", "3", "--ema", "0.9",
            "--progressive", "--stages", "2", "--image-size-range", "16", "24", "--randaugment-range", "0", "5",
            "--mixup-range", "0", "0.2", *extra]


def _ranks_of(launcher: subprocess.Popen) -> list[int]:
    """The processes torchrun started (its ranks), once they are there."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _finish(_torchrun(2, *_train_command(tmp_path, "--save", str(tmp_path / "whole"))))
    assert code == 0, f"the uninterrupted run failed: {err[-3000:]}"
    assert err.count("saved the trained weights") == 1 and out.count("final train loss") == 1, (out, err[-3000:])
    assert sorted(path.name for path in (tmp_path / "whole").iterdir()) == ["result.json", "spec.yaml", "weights.pt"]

    checkpoint = tmp_path / "run.pt"
    killed = _torchrun(2, *_train_command(tmp_path, "--checkpoint", str(checkpoint)))
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = _ranks_of(killed)
    if killed.poll() is not None:
        code, _, err = _finish(killed)
        pytest.fail(f"the run to kill ended with status {code} before it could be killed: {err[-3000:]}")
    os.killpg(killed.pid, signal.SIGSTOP)  # frozen while the checkpoint is read: no later epoch can land
    saved_epochs = len(torch.load(checkpoint, weights_only=True)["history"]) if checkpoint.exists() else 0
    if not (1 <= saved_epochs < 5 and len(ranks) == 2):
        os.killpg(killed.pid, signal.SIGCONT)
        pytest.fail(f"to kill: a checkpoint of 1-4 epochs (it has {saved_epochs}) and 2 ranks ({ranks}): "
                    f"{_abort(killed)[-6000:]}")
    os.kill(ranks[-1], signal.SIGTERM)  # one rank: torchrun then ends the others
    os.killpg(killed.pid, signal.SIGCONT)
    code, _, err = _finish(killed)
    assert code != 0, f"the run ended before it could be killed: {err[-2000:]}"
    assert len(torch.load(checkpoint, weights_only=True)["history"]) < 5, "the killed run finished its last epoch"

    elsewhere = tmp_path / "copy.pt"  # the same checkpoint, resumed by one process below
    elsewhere.write_bytes(checkpoint.read_bytes())
    resumed = _torchrun(2, *_train_command(tmp_path, "--checkpoint", str(checkpoint), "--resume", "--save",
                                           str(tmp_path / "resumed")))
    code, _, err = _finish(resumed)
    assert code == 0, f"the resumed run failed: {err[-3000:]}"
    whole = torch.load(tmp_path / "whole" / "weights.pt")
    again = torch.load(tmp_path / "resumed" / "weights.pt")
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=1e-6, atol=1e-7,
                                   msg=lambda text, name=name: f"resumed after {saved_epochs} epochs, {name}: {text}")

    capsys.readouterr()
    assert main(_train_command(tmp_path, "--checkpoint", str(elsewhere), "--resume")[2:]) == 0  # one process
    assert f"{elsewhere} was written by 2 rank(s) and resumes with 1" in capsys.readouterr().err


def test_a_global_batch_is_shared_in_order_and_per_sample() -> None:
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8)
    labels = torch.arange(40)
    options = dict(batch_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, augment="crop_flip", seed=5)
    alone = list(DeviceBatches(images, labels, **options))
    shares = [list(DeviceBatches(images, labels, rank=rank, world_size=2, **options)) for rank in (0, 1)]
    assert len(alone) == len(shares[0]) == len(shares[1]) == 5
    for whole, first, second in zip(alone, *shares):
        assert torch.equal(torch.cat([first[1], second[1]]), whole[1])
        assert torch.equal(torch.cat([first[0], second[0]]), whole[0])  # crops and flips belong to the sample


def test_a_batch_the_ranks_cannot_share_is_refused() -> None:
    with pytest.raises(DistributedError, match="--batch-size 30 is the global batch and must be divisible by the 4"):
        DataParallel(rank=0, world_size=4).share(30)
    with pytest.raises(ValueError, match="must be divisible by world_size 3"):
        DeviceBatches(torch.zeros(9, 1, 4, 4, dtype=torch.uint8), torch.zeros(9, dtype=torch.int64), batch_size=4,
                      mean=(0.5,), std=(0.5,), world_size=3, rank=1)


def test_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment() == DataParallel()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DistributedError, match="sets RANK but not WORLD_SIZE, LOCAL_RANK"):
        from_environment()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(DistributedError, match="LOCAL_RANK must be an integer, got 'x'"):
        from_environment()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment(sync_batch_norm=True) == DataParallel(rank=1, world_size=2, local_rank=1,
                                                                  sync_batch_norm=True, launched=True)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match="rank"):
        from_environment()


def test_global_batch_norm_is_batch_norm_in_one_process() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=None))
    converted = convert_batch_norm(torch.nn.Sequential(*[layer for layer in model]), torch.device("cpu"))
    assert isinstance(converted[1], GlobalBatchNorm2d)
    images = torch.randn(6, 3, 8, 8)
    torch.testing.assert_close(converted(images), model(images))


def test_a_process_group_someone_else_set_up_is_used_and_left_to_them(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As under Ray Train's TorchTrainer, which joins its workers' group before nas runs in them."""
    import socket

    import torch.distributed as dist

    with socket.socket() as probe:  # the launcher's rendezvous, for the group of the first block
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(probe.getsockname()[1]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    launched = DataParallel(launched=True)
    with process_group(launched, torch.device("cpu")):  # nobody's group: this block's own
        assert dist.is_initialized() and dist.get_world_size() == 1
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with process_group(launched, torch.device("cpu")):
            assert dist.is_initialized()
        assert dist.is_initialized()  # still the owner's
    finally:
        dist.destroy_process_group()
