# SPDX-License-Identifier: Apache-2.0
import nir
import numpy as np
import pytest
import torch

from spikeforge.errors import ConfigError
from spikeforge.gen.compiler import compile_network
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.gen.nir_graph import network_from_nir, network_to_nir
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import SpikingMLP


def lif(n, tau=2.0, v_th=1.0, **changes):
    fields = {"tau": np.full(n, tau), "r": np.ones(n), "v_leak": np.zeros(n),
              "v_threshold": np.full(n, v_th), "v_reset": np.zeros(n)}
    fields.update(changes)
    return nir.LIF(**fields)


def chain(*layers, check=False):
    """Input → layers → Output, named l0, l1, ..."""
    first = layers[0]
    n_in = first.weight.shape[1]
    nodes = {"in": nir.Input(input_type={"input": np.array([n_in])})}
    edges, prev = [], "in"
    for k, node in enumerate(layers):
        nodes[f"l{k}"] = node
        edges.append((prev, f"l{k}"))
        prev = f"l{k}"
    n_out = np.asarray(layers[-1].v_threshold).size if hasattr(layers[-1], "v_threshold") else 1
    nodes["out"] = nir.Output(output_type={"output": np.array([n_out])})
    edges.append((prev, "out"))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=check)


def test_a_written_graph_becomes_the_golden_network(tmp_path):
    rng = np.random.default_rng(0)
    w0, w1 = rng.normal(size=(6, 5)), rng.normal(size=(3, 6))
    cuba = nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.full(3, 4.0), r=np.ones(3),
                       v_leak=np.zeros(3), v_threshold=np.full(3, 0.75), v_reset=np.zeros(3),
                       w_in=np.ones(3))
    graph = chain(nir.Affine(weight=w0, bias=np.zeros(6)), lif(6, tau=4.0, v_th=0.75),
                  nir.Linear(weight=w1), cuba, check=True)
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    net = network_from_nir(path)
    assert net.sizes == (5, 6, 3)
    assert net.lif.tau == 4.0 and net.lif.v_th == 0.75 and net.lif.v_reset == 0
    for name, w in (("fc0", w0), ("fc1", w1)):      # rounded once to binary16
        assert torch.equal(net.weights[name], torch.from_numpy(w.astype(np.float16)).float())
    program = compile_network(net.to(FP16()), AcceleratorConfig(cores=2, neurons=8, fan_in=8,
                                                                lanes=4, timesteps=4),
                              timesteps=4)
    assert [c.inputs for c in program.cores] == [5, 6]


def test_round_trip_through_nir():
    net = SpikingMLP([7, 4, 2], seed=3, gain=2.0)
    back = network_from_nir(network_to_nir(net))
    assert back.sizes == net.sizes
    for name in net.weights:
        assert torch.equal(back.weights[name], net.weights[name])
    x = (torch.rand(4, 2, 7, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    assert torch.equal(back.forward(x)[0], net.forward(x)[0])


W = np.ones((2, 2))


@pytest.mark.parametrize("graph, message", [
    (chain(nir.Conv1d(input_shape=4, weight=np.ones((2, 1, 3)), stride=1, padding=0,
                      dilation=1, groups=1, bias=np.zeros(2)), lif(2)),
     "'l0' (Conv1d) cannot run on the cores"),
    (chain(nir.Affine(weight=W, bias=np.ones(2)), lif(2)), "'l0' (Affine) has a non-zero bias"),
    (chain(nir.Linear(weight=W), lif(2, r=np.full(2, 2.0))), "'l1': r = 2"),
    (chain(nir.Linear(weight=W), lif(2, v_threshold=np.array([1.0, 0.5]))),
     "'l1': v_threshold differs between neurons"),
    (chain(nir.Linear(weight=W), lif(2, v_leak=np.full(2, -0.5))),
     "'l1': v_leak = -0.5 differs from v_reset = 0"),
    (chain(nir.Linear(weight=W), nir.CubaLIF(
        tau_syn=np.full(2, 2.0), tau_mem=np.full(2, 2.0), r=np.ones(2), v_leak=np.zeros(2),
        v_threshold=np.ones(2))), "'l1' (CubaLIF) has tau_syn=2"),
    (chain(nir.Linear(weight=W), lif(2), nir.Linear(weight=W), lif(2, tau=3.0)),
     "LIF layers differ in tau"),
    (chain(nir.Linear(weight=W), nir.Linear(weight=W)), "'l1' (Linear) cannot run"),
    (chain(nir.Linear(weight=np.ones((3, 2))), lif(2)), "'l0' has weights (3, 2)"),
])
def test_graphs_the_cores_cannot_run_are_refused(graph, message):
    with pytest.raises(ConfigError) as info:
        network_from_nir(graph)
    assert message in str(info.value)


def test_branching_graph_is_refused():
    graph = chain(nir.Linear(weight=W), lif(2))
    graph.edges.append(("l0", "out"))
    with pytest.raises(ConfigError, match="'l0' feeds"):
        network_from_nir(graph)
