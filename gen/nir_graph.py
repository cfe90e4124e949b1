# SPDX-License-Identifier: Apache-2.0
"""NIR graphs in and out: the Neuromorphic Intermediate Representation (the ``nir`` package).

A graph maps onto spikeforge cores when it is a chain ``Input → (Linear | Affine → LIF |
CubaLIF)+ → Output`` whose parameters the cores compute exactly. The cores run spikingjelly's
discrete LIF, ``H = V + (X − (V − V_reset)) / τ`` a timestep, which is NIR's
``τ·dv/dt = (v_leak − v) + r·I`` integrated by forward Euler with ``dt`` = one timestep when

* ``r = 1`` and ``v_leak = v_reset`` (the membrane decays towards the reset potential),
* ``τ``, ``v_threshold`` and ``v_reset`` are the same for every neuron of a layer (a core has one
  register each) and for every layer (the golden network has one LIF configuration),
* an ``Affine`` bias is zero (the cores have none),
* a ``CubaLIF`` has ``tau_syn = 1`` and ``w_in = 1``: its synaptic current is then the input of
  the same timestep, as for ``LIF``.

Anything else is refused with a message naming the node.

>>> from spikeforge.golden.network import SpikingMLP
>>> graph = network_to_nir(SpikingMLP([4, 3, 2], seed=1))
>>> sorted(graph.nodes), network_from_nir(graph).sizes
(['fc0', 'fc1', 'input', 'lif0', 'lif1', 'output'], (4, 3, 2))
"""

from pathlib import Path

import numpy as np

from spikeforge.errors import ConfigError
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.network import SpikingMLP, round_once
from spikeforge.golden.surrogate import Surrogate

__all__ = ["network_from_nir", "network_to_nir"]


def _uniform(node_name: str, field: str, value) -> float:
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(array == array[0]):
        raise ConfigError(f"NIR node {node_name!r}: {field} differs between neurons; a core "
                          f"has one {field} for all its neurons")
    return float(array[0])


def _lif(name: str, node) -> tuple[LIFParams, int]:
    import nir

    if isinstance(node, nir.CubaLIF):
        tau_syn = _uniform(name, "tau_syn", node.tau_syn)
        w_in = _uniform(name, "w_in", node.w_in)
        if tau_syn != 1 or w_in != 1:
            raise ConfigError(f"NIR node {name!r} (CubaLIF) has tau_syn={tau_syn:g}, "
                              f"w_in={w_in:g}; the cores have no synaptic filter, which only "
                              f"tau_syn = 1 and w_in = 1 reproduce")
        tau = node.tau_mem
    else:
        tau = node.tau
    tau = _uniform(name, "tau", tau)
    r = _uniform(name, "r", node.r)
    v_leak = _uniform(name, "v_leak", node.v_leak)
    v_th = _uniform(name, "v_threshold", node.v_threshold)
    v_reset = _uniform(name, "v_reset", node.v_reset if node.v_reset is not None
                       else np.zeros_like(np.asarray(node.v_threshold)))
    if r != 1:
        raise ConfigError(f"NIR node {name!r}: r = {r:g}; the cores compute r = 1 (scale the "
                          f"weights of the layer before it instead)")
    if v_leak != v_reset:
        raise ConfigError(f"NIR node {name!r}: v_leak = {v_leak:g} differs from v_reset = "
                          f"{v_reset:g}; the cores' membranes decay towards v_reset")
    size = int(np.asarray(node.v_threshold).size)
    try:
        params = LIFParams(tau=tau, v_th=v_th, v_reset=v_reset, surrogate=Surrogate())
    except ConfigError as error:
        raise ConfigError(f"NIR node {name!r}: {error}") from None
    return params, size


def network_from_nir(graph, *, surrogate: str = "sigmoid") -> SpikingMLP:
    """The golden :class:`SpikingMLP` of a NIR graph (or the path of a NIR file); its weights
    are rounded once to binary16 (:func:`~spikeforge.golden.network.round_once`), so every
    backend runs the graph from the same bits."""
    import nir

    if isinstance(graph, (str, Path)):
        try:
            graph = nir.read(graph)
        except Exception as error:
            raise ConfigError(f"cannot read the NIR graph {graph}: {error}") from None
    if not isinstance(graph, nir.NIRGraph):
        raise ConfigError(f"expected a NIR graph, not {type(graph).__name__}")
    successors = {}
    for src, dst in graph.edges:
        if src in successors:
            raise ConfigError(f"NIR node {src!r} feeds {successors[src]!r} and {dst!r}; only "
                              f"a chain of layers maps onto the cores")
        successors[src] = dst
    inputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise ConfigError(f"a NIR graph for the cores has one Input node, this one "
                          f"{len(inputs)}")
    weights, lifs, order = [], [], []
    name = successors.get(inputs[0])
    seen = {inputs[0]}
    while name is not None and not isinstance(graph.nodes[name], nir.Output):
        if name in seen:
            raise ConfigError(f"NIR node {name!r} closes a cycle; the cores run feedforward "
                              f"chains")
        seen.add(name)
        node = graph.nodes[name]
        expect_weights = len(weights) == len(lifs)
        if expect_weights and isinstance(node, (nir.Linear, nir.Affine)):
            if isinstance(node, nir.Affine) and np.any(np.asarray(node.bias) != 0):
                raise ConfigError(f"NIR node {name!r} (Affine) has a non-zero bias; the cores "
                                  f"have none")
            weights.append((name, round_once(np.asarray(node.weight, dtype=np.float64))))
        elif not expect_weights and isinstance(node, (nir.LIF, nir.CubaLIF)):
            lifs.append(_lif(name, node))
        else:
            wanted = "Linear or Affine" if expect_weights else "LIF or CubaLIF"
            raise ConfigError(f"NIR node {name!r} ({type(node).__name__}) cannot run on the "
                              f"cores here: a {wanted} node must come next (the cores run "
                              f"chains of Linear/Affine + LIF/CubaLIF layers)")
        order.append(name)
        name = successors.get(name)
    if name is None:
        raise ConfigError("the NIR graph's chain does not reach an Output node")
    if not lifs or len(weights) != len(lifs):
        raise ConfigError("the NIR graph must end with a LIF or CubaLIF layer before its Output")
    params = {(p.tau, p.v_th, p.v_reset) for p, _ in lifs}
    if len(params) > 1:
        raise ConfigError(f"the NIR graph's LIF layers differ in tau, v_threshold or v_reset "
                          f"({sorted(params)}); the golden network has one LIF configuration")
    sizes = [weights[0][1].shape[1]]
    for (wname, w), (lname, (_, size)) in zip(weights, zip(order[1::2], lifs, strict=True),
                                              strict=True):
        if w.dim() != 2 or w.shape[1] != sizes[-1] or w.shape[0] != size:
            raise ConfigError(f"NIR node {wname!r} has weights {tuple(w.shape)}, which do not "
                              f"join {sizes[-1]} inputs to the {size} neurons of {lname!r}")
        sizes.append(size)
    lif = LIFParams(tau=lifs[0][0].tau, v_th=lifs[0][0].v_th, v_reset=lifs[0][0].v_reset,
                    surrogate=Surrogate(surrogate))
    net = SpikingMLP(sizes, lif=lif)
    net.load_state_dict({f"fc{k}": w for k, (_, w) in enumerate(weights)})
    return net


def network_to_nir(net: SpikingMLP):
    """The NIR graph of a golden :class:`SpikingMLP` (``Linear`` + ``LIF`` layers)."""
    import nir

    lif = net.lif
    if lif.reset != "hard":
        raise ConfigError("NIR's LIF resets to v_reset (hard reset); this network resets softly")
    nodes = {"input": nir.Input(input_type={"input": np.array([net.sizes[0]])})}
    edges, prev = [], "input"
    for k, n in enumerate(net.sizes[1:]):
        w = net.weights[f"fc{k}"].double().numpy()
        ones = np.ones(n)
        nodes[f"fc{k}"] = nir.Linear(weight=w)
        nodes[f"lif{k}"] = nir.LIF(tau=ones * lif.tau, r=ones, v_leak=ones * lif.v_reset,
                                   v_threshold=ones * lif.v_th, v_reset=ones * lif.v_reset)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        prev = f"lif{k}"
    nodes["output"] = nir.Output(output_type={"output": np.array([net.sizes[-1]])})
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)
