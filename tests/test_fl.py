# SPDX-License-Identifier: Apache-2.0
import json

import pytest
import torch

from spikeforge.cli import main
from spikeforge.data import load_dataset
from spikeforge.errors import ConfigError
from spikeforge.fl import FLError, dirichlet_shards, run_fl
from spikeforge.train import TrainConfig

SMALL = {"hidden": 16, "timesteps": 4}


@pytest.mark.slow
def test_federated_rounds_average_the_clients_by_examples(tmp_path):
    path = tmp_path / "fl.json"
    result = run_fl(workers=3, rounds=2, local_epochs=1, cfg=TrainConfig(**SMALL),
                    json_path=path, progress=False)
    assert json.loads(path.read_text())["rounds"] == 2
    assert [h["round"] for h in result["rounds_history"]] == [1, 2]
    for entry in result["rounds_history"]:
        clients = entry["clients"]
        assert sorted(c["worker"] for c in clients) == [0, 1, 2]
        total = sum(c["examples"] for c in clients)
        mean = sum(c["examples"] * c["weight_sum"] for c in clients) / total
        assert entry["aggregate_weight_sum"] == pytest.approx(mean, rel=1e-9, abs=1e-9)
        spread = max(c["weight_sum"] for c in clients) - min(c["weight_sum"] for c in clients)
        assert spread > 1e-3, "the clients trained alike: the average proves nothing"
    assert [s["samples"] for s in result["shards"]] == \
        [c["examples"] for c in result["rounds_history"][0]["clients"]]
    assert result["rounds_history"][-1]["test_accuracy"] > 0.3
    assert result["centralised_test_accuracy"] > 0.5
    assert result["gap"] == result["centralised_test_accuracy"] - result["test_accuracy"]


def test_shards_are_non_iid_and_cover_the_training_set():
    train, _ = load_dataset("digits")
    shards = dirichlet_shards(train.y, 5, 0.5, seed=0)
    assert sorted(i for s in shards for i in s) == list(range(len(train.y)))
    shares = torch.stack([torch.bincount(train.y[s], minlength=10) / len(s) for s in shards])
    assert (shares.max(0).values - shares.min(0).values).max() > 0.3
    assert dirichlet_shards(train.y, 5, 0.5, seed=0) == shards
    assert dirichlet_shards(train.y, 5, 0.5, seed=1) != shards


@pytest.mark.parametrize("kwargs, error, message", [
    ({"workers": 0}, ConfigError, "workers must be a positive integer, not 0"),
    ({"rounds": 0}, ConfigError, "rounds must be a positive integer, not 0"),
    ({"backend": "gpu"}, ConfigError, "backend must be golden or sim"),
    ({"workers": 2, "boards": ["tcp://127.0.0.1:1"]}, ConfigError,
     "1 board URLs for 2 workers"),
    ({"alpha": 0}, ConfigError, "alpha must be positive"),
])
def test_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        run_fl(cfg=TrainConfig(**SMALL), progress=False, **kwargs)


@pytest.mark.slow
def test_a_worker_whose_board_is_gone_is_named():
    with pytest.raises(FLError, match=r"worker 1: LinkError: cannot connect to "
                                      r"tcp://127.0.0.1:1"):
        run_fl(workers=2, rounds=1, boards=["tcp://127.0.0.1:1", "tcp://127.0.0.1:1"],
               cfg=TrainConfig(**SMALL), progress=False)


def test_cli_errors_are_one_line(capsys):
    assert main(["fl", "--workers", "2", "--boards", "tcp://a:1"]) == 2
    err = capsys.readouterr().err
    assert "1 board URLs for 2 workers" in err and "Traceback" not in err


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    import pathlib

    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_no_worker_outlives_a_killed_host():
    """The host killed outright (no clean-up of its own): Linux stops its server and workers,
    and a worker's board with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    host = subprocess.Popen([sys.executable, "-m", "spikeforge.cli", "fl", "--workers", "2",
                             "--rounds", "50", "--local-epochs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = host.stderr.readline()
        while line and "round 1/50" not in line:
            line = host.stderr.readline()
        assert "round 1/50" in line
        workers = _children(host.pid)
        assert len(workers) >= 3, workers             # the server and two workers at least
    finally:
        host.kill()
        host.wait()
    deadline = time.monotonic() + 30
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}")
                 and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes {alive} outlived their host"


def test_flower_sends_nothing_home():
    """No usage reports or update checks: federated training talks only to its own workers."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c",
                          "import spikeforge.fl\n"
                          "from flwr.supercore import telemetry\n"
                          "import os\n"
                          "print(telemetry.FLWR_TELEMETRY_ENABLED, "
                          "os.environ['FLWR_DISABLE_UPDATE_CHECK'])"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "1"]
