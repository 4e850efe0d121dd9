"""A whole training step as a CUDA graph: forward, backward, gradient clipping and the
optimizer step captured once per input shape and replayed.

A small model at a small batch (S3's 24M-parameter encoder at batch 16-32, S6's CNNs, S1's
fusion trial at batch 4) is bound by kernel launches, not arithmetic: one eager step issues
hundreds to thousands of kernels from Python, each a few microseconds of CPU time, while the
GPU idles between them. A replayed graph launches them all in one call (on an H100: S3 at
batch 32 5.4× faster, S1 at batch 4 9.9×; docs/gpu.md). Shapes must repeat for this to pay:
S3 pads pairs to a multiple of 32 pieces, so a run sees at most four widths (and a last,
smaller batch); S1 pads tokens to 16 and frames to 50.

Contract: the optimizer is built with `capturable=True` (and, for a schedule, a tensor
learning rate on the device, so that a scheduler's `fill_` reaches the captured step); the
step function takes the batch as the loader yields it and moves it to the device itself.
The first batch of each shape runs eagerly on the step's own stream, the one its captures
use (it is a real training step and the warm-up the capture needs), then the shape is captured; later batches of that shape are
copied into the captured inputs and replayed. Every backward of the model must go through
this step: an earlier eager backward on the default stream leaves autograd waiting on that
stream, which a capture cannot do (PyTorch 2.11). Dropout draws fresh numbers on each replay
(PyTorch advances the graph's random offset). Outputs are the graph's own tensors, valid
until the next replay: the epoch loop consumes them before it asks for the next step.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def wants_graphs(config: dict, device: torch.device, world: int = 1) -> bool:
    """Whether a trial's step runs as a CUDA graph: on one GPU (not data-parallel), unless the
    config says `cuda_graphs: false`."""
    return device.type == "cuda" and world == 1 and bool(config.get("cuda_graphs", True))


def round_up(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple`: padded widths repeat, so captures are few."""
    return -(-n // multiple) * multiple


def capturable(device: torch.device) -> dict:
    """Optimizer options for a step a CUDA graph can capture: fused and capturable on a GPU;
    none elsewhere."""
    return {"fused": True, "capturable": True} if device.type == "cuda" else {}


def rate(lr: float, device: torch.device) -> float | torch.Tensor:
    """A learning rate as the captured step reads it: a device tensor on a GPU (a scheduler's
    fill_ then reaches the graph), a float elsewhere."""
    return torch.tensor(float(lr), device=device) if device.type == "cuda" else float(lr)


class GraphedTrainStep:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable,
                 device: torch.device, grad_clip: float | None = 1.0, max_graphs: int = 8):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        if not all(g.get("capturable") for g in optimizer.param_groups):
            raise ValueError(f"{type(optimizer).__name__} must be built with capturable=True to be captured")
        self.model, self.optimizer, self.step, self.device = model, optimizer, step, device
        self.grad_clip, self.max_graphs = grad_clip, max_graphs
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graphs: dict = {}  # shape key → (static input leaves, spec, outputs, graph)
        self.eager_steps = 0
        # Warm-ups and captures all on one stream: autograd's gradient-accumulation nodes
        # remember the stream of their last backward, and a capture that must wait on another
        # (non-capturing) stream is invalidated
        self.stream = torch.cuda.Stream(device)

    def _train(self, batch):
        loss, logits, y = self.step(self.model, batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss.detach(), logits.detach(), y.detach()

    def __call__(self, batch):
        leaves, spec = tree_flatten(batch)
        key = (str(spec), tuple((tuple(t.shape), t.dtype) if torch.is_tensor(t) else t for t in leaves))
        entry = self.graphs.get(key)
        if entry is not None:
            static, _, outputs, graph = entry
            for dst, src in zip(static, leaves):
                if torch.is_tensor(dst):
                    dst.copy_(src, non_blocking=True)
            graph.replay()
            return outputs
        if len(self.graphs) >= self.max_graphs:  # too many shapes: the rest run eagerly
            self.eager_steps += 1
            return self._train(batch)
        static = [t.to(self.device, copy=True) if torch.is_tensor(t) else t for t in leaves]
        static_batch = tree_unflatten(static, spec)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):  # this batch's real step, and the capture's warm-up
            result = tuple(t.clone() for t in self._train(static_batch))
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self.stream):  # recorded, not run
            outputs = self._train(static_batch)
        current.wait_stream(self.stream)
        self.graphs[key] = (static, spec, outputs, graph)
        return result
