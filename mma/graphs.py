"""CUDA graphs (``compute.cuda_graphs``): a function of fixed-shape tensors captured once
per key and replayed; the whole training step is one (``mma.train.optimize``), and so is
every evaluation attack (``graphed``, under ``capture_attacks``).

A graph replays a fixed sequence of kernels on fixed memory.  What it captures must
therefore run on the fixed-shape path (``mma.attacks.core.attack_path``: masks, a fixed
number of iterations, nothing read back to the host), read its inputs from the same
tensors at every call (static inputs, filled with ``copy_``) and keep its state in
tensors updated in place (weights, optimizer state, MMA's ε store, the learning rate).

One key (its inputs' shapes and dtypes and the call's settings) goes through:

    the first ``warmup`` calls: eager, on a side stream (lazy initialisation — library
        handles, the optimizer's state, autograd's — then happens outside a capture,
        as torch's CUDA-graph notes ask);
    the next call: captured on that stream, then replayed;
    every later call: its inputs copied into the static ones, replayed.

A key used only ``warmup`` times costs no capture, and past ``max_graphs`` keys a call
runs eagerly.  Random numbers come from the default CUDA generator, which torch makes
graph-safe: a replay draws from the generator's seed and offset at that moment and
advances the offset by what the eager call would, so ``torch.manual_seed`` before a
call and an RNG state restored on resume act on replays as on eager calls.

Only CUDA captures; on other devices ``GraphCache`` runs every call eagerly, which is
how a CPU runs (and tests) the fixed-shape code that a GPU captures.  The capture uses
``torch.cuda.graph`` and ``torch.cuda.Stream``, both in torch since 1.10.
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor


def map_tensors(fn: Callable[[Tensor], Any], tree):
    """``tree`` (tensors in tuples, lists and dicts, other leaves kept) with ``fn`` applied
    to every tensor."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    return tree


def _captures(device: torch.device) -> bool:
    """Whether calls on ``device`` are captured: CUDA's only."""
    return device.type == "cuda"


class _Captured:
    """One captured call: its static inputs (allocated outside the graph's pool), the
    graph and its static outputs (overwritten by every replay)."""

    def __init__(self, fn: Callable, inputs: tuple, stream, pool) -> None:
        self.static = tuple(None if t is None else t.detach().clone() for t in inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.outputs = fn(*self.static)

    def replay(self, inputs: tuple):
        for static, t in zip(self.static, inputs):
            if static is not None:
                static.copy_(t)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Calls of ``fn(*inputs)`` by key, captured as CUDA graphs when the inputs are on a
    CUDA device (see the module docstring); eager on other devices.

    ``copy_outputs``: return copies of a replay's outputs (the next replay overwrites
    the static ones); without it, the caller must consume them before the next call.
    ``shared_pool``: every graph of this cache allocates from one memory pool.  Safe
    only because nothing a graph leaves in the pool is read after another graph of the
    cache replays: inputs live outside the pool and outputs are copied (or consumed)
    before the next call; it keeps the memory of many attack settings that of the
    largest one."""

    def __init__(
        self, *, warmup: int = 1, max_graphs: int = 32, copy_outputs: bool = True, shared_pool: bool = False
    ) -> None:
        self.warmup, self.max_graphs, self.copy_outputs, self.shared_pool = (
            warmup,
            max_graphs,
            copy_outputs,
            shared_pool,
        )
        self.graphs: dict = {}
        self.calls: dict = {}
        self.stream = self.pool = None  # made at the first CUDA call, on its device

    def __call__(self, key, fn: Callable, inputs: tuple):
        """fn(*inputs), ``inputs`` tensors (or None) of fixed shapes for ``key``."""
        device = next(t.device for t in inputs if t is not None)
        if not _captures(device):
            return fn(*inputs)
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
            self.pool = torch.cuda.graph_pool_handle() if self.shared_pool else None
        captured = self.graphs.get(key)
        if captured is None:
            seen = self.calls[key] = self.calls.get(key, 0) + 1
            if seen <= self.warmup or len(self.graphs) >= self.max_graphs:
                return self._on_side_stream(fn, inputs, device)
            captured = self.graphs[key] = _Captured(fn, inputs, self.stream, self.pool)
        outputs = captured.replay(inputs)
        return map_tensors(torch.clone, outputs) if self.copy_outputs else outputs

    def _on_side_stream(self, fn: Callable, inputs: tuple, device: torch.device):
        """An eager call on the capture stream (the warm-up: what it initialises lazily is
        then ready for the capture there), ordered after and before the caller's work."""
        current = torch.cuda.current_stream(device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            outputs = fn(*inputs)
        current.wait_stream(self.stream)
        return outputs


# --------------------------------------------------------------------------- attacks
# The evaluation's graph cache (None: attacks run eagerly); set by ``capture_attacks``.
_ATTACK_GRAPHS: ContextVar[Optional[GraphCache]] = ContextVar("mma_attack_graphs", default=None)
MAX_ATTACK_GRAPHS = 32  # (batch shape, attack setting) pairs captured per evaluation; later ones run eagerly


@contextlib.contextmanager
def capture_attacks() -> Iterator[None]:
    """In the body, every attack on CUDA is captured: one graph per (model, batch shape,
    attack setting), the first call of each eager (``GraphCache``; one shared memory pool,
    outputs copied).  Attacks must run on the fixed-shape path (``mma.compute.attacks``
    sets both)."""
    token = _ATTACK_GRAPHS.set(GraphCache(warmup=1, max_graphs=MAX_ATTACK_GRAPHS, shared_pool=True))
    try:
        yield
    finally:
        _ATTACK_GRAPHS.reset(token)


def graphed(attack: Callable) -> Callable:
    """An attack's inner function ``attack(model, *tensors, **settings)`` (tensors: inputs
    of fixed shapes, or None; settings: hashable; a tensor passed by keyword is an input
    too) captured under ``capture_attacks``: the key is the model, the inputs' shapes and
    dtypes, the settings and the context's step precision, path and search (the key holds
    the model itself: its graph reads the weights' memory).  Attacks that it calls run
    inside its graph (not captured again)."""
    from .attacks.core import attack_settings

    @functools.wraps(attack)
    def call(model, *args, **kwargs):
        cache = _ATTACK_GRAPHS.get()
        if cache is None:
            return attack(model, *args, **kwargs)
        names = [k for k, v in kwargs.items() if isinstance(v, Tensor)]
        settings = {k: v for k, v in kwargs.items() if k not in names}
        inputs = (*args, *(kwargs[k] for k in names))
        x = next(t for t in inputs if t is not None)
        key = (
            attack.__qualname__,
            model,
            tuple(names),
            tuple(sorted(settings.items())),
            attack_settings(x.device),
            tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs),
        )

        def run(*tensors):
            token = _ATTACK_GRAPHS.set(None)  # nested attacks: inside this graph
            try:
                return attack(model, *tensors[: len(args)], **settings, **dict(zip(names, tensors[len(args) :])))
            finally:
                _ATTACK_GRAPHS.reset(token)

        return cache(key, run, inputs)

    return call
