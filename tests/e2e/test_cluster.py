"""Cluster-grade reliability against real processes: Ray nodes, drivers and workers killed, faulty candidates,
two drivers on one study, an unreachable storage.

Faults are injected by ``fault_driver.py``, which runs the real runner, study, Ray and trainer, and makes chosen
specs run out of memory, diverge, raise, or wait to be killed.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search_spaces import presets

from conftest import service_unavailable
from e2e_support import CAMPAIGN, finished, load, nas, wait_for_running_trial, write_campaign

FAULT_DRIVER = Path(__file__).with_name("fault_driver.py")


def candidate_specs(count: int, seed: int = 0) -> list[tuple[dict, str]]:
    """``count`` distinct candidates of the tiny space that are not its baseline: (params, block strings)."""
    space = presets.get_space("tiny")
    baseline = " ".join(space.baseline.block_strings)
    chosen: dict[str, dict] = {}
    rng = random.Random(seed)
    for spec in (space.sample(rng) for _ in range(count * 4)):
        key = " ".join(spec.block_strings)
        if key != baseline:
            chosen.setdefault(key, space.to_params(spec))
    assert len(chosen) >= count
    return [(params, key) for key, params in list(chosen.items())[:count]]


def enqueue(storage_url: str, name: str, params: list[dict]) -> None:
    """Creates the campaign's study ahead of its driver and puts ``params`` in line after the baseline."""
    study = optuna.create_study(storage=storage_url, study_name=name, direction="maximize")
    space = presets.get_space("tiny")
    study.enqueue_trial(space.to_params(space.baseline), user_attrs={"role": "baseline"})
    for trial_params in params:
        study.enqueue_trial(trial_params)


def run_fault_driver(directory: Path, campaign: Path, faults: dict[str, str]) -> subprocess.Popen:
    (directory / "faults.json").write_text(json.dumps(faults))
    return subprocess.Popen(
        [sys.executable, str(FAULT_DRIVER), str(campaign), str(directory / "faults.json"), str(directory / "log.jsonl")],
        cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def test_failing_candidates_are_recorded_and_the_campaign_goes_on(tmp_path):
    storage = f"sqlite:///{tmp_path}/faults.db"
    (oom, oom_key), (nan, nan_key), (raising, raise_key) = candidate_specs(3)
    enqueue(storage, "faults", [oom, nan, raising])
    campaign = write_campaign(tmp_path, study="faults", storage=storage, trials=5, workers=1,
                              train={**CAMPAIGN["train"], "epochs": 2})
    driver = run_fault_driver(tmp_path, campaign, {oom_key: "out_of_memory", nan_key: "nan", raise_key: "raise"})
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert "finished 5/5" in stdout

    study = load(storage, "faults")
    by_spec = {" ".join(t.user_attrs["block_strings"]): t for t in study.trials}
    reasons = {fault: by_spec[key].user_attrs.get("failure_reason", "")
               for fault, key in (("oom", oom_key), ("nan", nan_key), ("raise", raise_key))}
    assert all(by_spec[key].state == optuna.trial.TrialState.FAIL for key in (oom_key, nan_key, raise_key))
    assert reasons["oom"].startswith("out of memory: ") and "can't allocate memory" in reasons["oom"]
    assert reasons["nan"].startswith("non-finite loss")
    assert reasons["raise"] == "RuntimeError: injected fault after epoch 1"
    assert not any(by_spec[key].user_attrs.get("interrupted") for key in (oom_key, nan_key, raise_key))
    assert len(finished(study)) == 5 and len(study.trials) == 5  # failures count; nothing was run twice
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 2  # the campaign went on

    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    failed = [entry for entry in log if entry["fault"] is not None]
    assert sorted(entry["fault"] for entry in failed) == ["nan", "out_of_memory", "raise"]
    first_in_worker = {entry["pid"]: index for index, entry in reversed(list(enumerate(log)))}
    for index, entry in enumerate(log):
        if entry["fault"] is None:
            continue
        # Memory is back where it was: no tensor survives the trial and, past the worker's one-time set-up in its
        # first trial, resident memory did not grow.
        assert entry["status"] == "failed"
        assert entry["tensors_after"] <= entry["tensors_before"], entry
        if first_in_worker[entry["pid"]] != index:
            assert entry["rss_after"] - entry["rss_before"] < 32 * 2**20, entry


def test_a_killed_worker_fails_its_trial_which_runs_again(tmp_path):
    storage = f"sqlite:///{tmp_path}/worker.db"
    [(victim, victim_key)] = candidate_specs(1, seed=1)
    enqueue(storage, "worker", [victim])
    campaign = write_campaign(tmp_path, study="worker", storage=storage, trials=3, workers=1)
    driver = run_fault_driver(tmp_path, campaign, {victim_key: "kill_me"})
    pid_file = tmp_path / "log.jsonl.pid"
    try:
        deadline = time.monotonic() + 240
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), "the victim trial never started"
        time.sleep(0.2)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the Ray worker process running the trial
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, stderr
    assert "worker failed; it runs once more" in stdout and "finished 3/3" in stdout

    study = load(storage, "worker")
    killed = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(killed) == 1 and " ".join(killed[0].user_attrs["block_strings"]) == victim_key
    assert killed[0].state == optuna.trial.TrialState.FAIL
    assert "worker failed" in killed[0].user_attrs["failure_reason"]
    [rerun] = [t for t in study.trials if t.user_attrs.get("requeued_from") == killed[0].number]
    assert rerun.state == optuna.trial.TrialState.COMPLETE and rerun.params == killed[0].params
    assert len(finished(study)) == 3 and optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]


def test_two_drivers_started_at_once_one_runs_one_is_refused(tmp_path, storage_url):
    campaign = write_campaign(tmp_path, study="twice", storage=storage_url, trials=3, workers=1)
    command = [sys.executable, "-m", "nas", "search", "--config", str(campaign)]
    drivers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [driver.communicate(timeout=300) for driver in drivers]
    codes = sorted(driver.returncode for driver in drivers)
    assert codes == [0, 2], outputs
    refused = outputs[[driver.returncode for driver in drivers].index(2)][1]
    assert f"study 'twice' is being run by the driver on host {socket.gethostname()}" in refused
    assert "Traceback" not in refused

    study = load(storage_url, "twice")
    numbers = [t.number for t in study.trials]
    assert numbers == sorted(set(numbers)) and len(finished(study)) == 3 == len(study.trials)
    # The lock is released: beside the campaign, only the storage's step-time cache remains.
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(study._storage)) == ["nas:step-times", "twice"]
    again = nas(tmp_path, "search", "--config", str(campaign))
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize("storage", [
    "postgresql://nas@127.0.0.1:1/nas",  # nothing listens there: the database is down
    "mysql+nosuchdriver://user@localhost/db",  # no such driver
    "sqlite:////proc/no/such/dir/study.db",  # cannot be created
])
def test_an_unreachable_storage_is_a_clear_error_and_nothing_is_written(tmp_path, storage):
    campaign = write_campaign(tmp_path, study="down")
    before = sorted(tmp_path.rglob("*"))
    result = nas(tmp_path, "search", "--config", str(campaign), "--storage", storage, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("nas search: error: cannot open storage") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before  # no runs/, no database, no Ray session


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards: a disk that a test can fill for real."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        service_unavailable(f"a small tmpfs could not be mounted (it needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Writes a file into ``directory`` until its file system has no space left; returns the file."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def test_a_full_disk_stops_the_search_with_one_line_and_the_campaign_resumes(tmp_path, small_disk):
    url = f"sqlite:///{small_disk}/study.db"
    campaign = write_campaign(tmp_path, study="full", trials=5, workers=1, storage=url,
                              data="synthetic:num_images=2000,image_size=32")
    driver = subprocess.Popen([sys.executable, "-m", "nas", "search", "--config", str(campaign)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_running_trial(url, "full", complete=1)
        filler = fill(small_disk)  # the disk fills up while a trial trains: its result cannot be written
        _, stderr = driver.communicate(timeout=240)
    finally:
        driver.kill()
    assert driver.returncode == 2, stderr
    assert stderr.startswith("nas search: error: cannot write to storage") and "Traceback" not in stderr
    assert "disk is full" in stderr and "free some space, then run the same command to resume" in stderr
    assert len(stderr.strip().splitlines()) == 1
    filler.unlink()
    resumed = nas(tmp_path, "search", "--config", str(campaign))  # the dead driver's lock is taken over at once
    assert resumed.returncode == 0, resumed.stderr
    study = load(url, "full")
    assert len(finished(study)) == 5
    assert not {t.state for t in study.trials} & {optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING}


CREATE_STUDY = """
import sys
from nas.campaign import load_campaign
from nas.controllers import make_sampler
from nas.study import open_study
from search_spaces import presets
config = load_campaign(sys.argv[1])
space = presets.get_space(config.space)
open_study(config.study_settings(), space, make_sampler(config.controller, space))
"""


def test_a_read_only_database_is_a_one_line_error_on_resume(tmp_path, small_disk):
    url = f"sqlite:///{small_disk}/study.db"
    campaign = write_campaign(tmp_path, study="ro", storage=url)
    subprocess.run([sys.executable, "-c", CREATE_STUDY, str(campaign)], check=True)  # a campaign ran here before...
    before = (small_disk / "study.db").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # ...and its disk became read-only
    result = nas(tmp_path, "search", "--config", str(campaign), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"nas search: error: cannot write to storage {url}:")
    assert "readonly" in result.stderr and "make the database writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (small_disk / "study.db").read_bytes() == before


class RayNodes:
    """A Ray head and a second Ray node on this machine, each a separate `ray start --block` process group.

    Ray's token authentication is turned off for this throwaway cluster (``env``, to be given to its drivers too):
    once any earlier local Ray has saved a token in ~/.ray, `ray start` turns it on, and drivers must carry it.
    """

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.temp_dir = Path(f"/tmp/nas-ray-{os.getpid()}-{self.port}")  # Ray's socket paths must stay short
        common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
        head = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                "--include-dashboard", "false", "--temp-dir", str(self.temp_dir), *common]
        worker = ["ray", "start", "--address", self.address, "--node-ip-address", "127.0.0.1", *common]
        self.logs = [open(directory / "ray-head.log", "w"), open(directory / "ray-node.log", "w")]
        self.processes: list[subprocess.Popen] = []
        try:
            self.processes.append(subprocess.Popen(head, stdout=self.logs[0], stderr=subprocess.STDOUT, env=self.env,
                                                   start_new_session=True))
            self.wait_for_nodes(1)
            self.processes.append(subprocess.Popen(worker, stdout=self.logs[1], stderr=subprocess.STDOUT,
                                                   env=self.env, start_new_session=True))
            self.wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        probe = ("import ray, sys, time\n"
                 f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                 f"deadline = time.monotonic() + {timeout}\n"
                 f"while sum(node['Alive'] for node in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
                 "    time.sleep(0.5)\n"
                 f"sys.exit(0 if sum(node['Alive'] for node in ray.nodes()) >= {count} else 1)\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probed = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=timeout, env=self.env)
            if probed.returncode == 0:
                return
            time.sleep(1)
        raise AssertionError(f"the Ray cluster at {self.address} never had {count} live nodes")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
        for process in reversed(self.processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in self.logs:
            log.close()


def test_a_campaign_runs_across_two_ray_nodes(tmp_path):
    nodes = RayNodes(tmp_path)
    try:
        # Trials of several seconds, so that the second node's worker is up before the first node's could take
        # every trial in turn.
        campaign = write_campaign(tmp_path, study="nodes", trials=5, workers=2,
                                  data="synthetic:num_images=4000,image_size=32")
        result = nas(tmp_path, "search", "--config", str(campaign), "--address", nodes.address, env=nodes.env)
    finally:
        nodes.stop()
    assert result.returncode == 0, result.stderr + (tmp_path / "ray-node.log").read_text()[-2000:]
    study = load(f"sqlite:///{tmp_path}/runs/nodes.db", "nodes")
    assert len(finished(study)) == 5
    ran_on = {t.user_attrs["ray_node"] for t in study.trials}
    assert len(ran_on) == 2, f"all trials ran on {ran_on}"
