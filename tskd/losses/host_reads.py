"""Host reads in the losses: one copy of a batch's small integer tensors per loss call.

Why: on a GPU every value the host reads from a device tensor waits for the queued kernels, so
the losses copy what they need to read (labels, slots, modalities) once and derive every check
and index from that copy (benchmarks/optimisations.py counts the reads).
"""

from __future__ import annotations

import torch


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a small integer tensor: the one host synchronisation a loss call makes.

    On a GPU every value the host reads (``int(t)``, ``bool(t)``, ``t.tolist()``, a boolean
    mask's selection, ``torch.unique``) waits for the queued kernels and drains the device's
    queue. The losses read the batch's labels (and slots, modalities) once through this copy and
    derive every check and index from it on the host. On the CPU it is a cheap copy.
    """
    return t.detach().to("cpu", copy=True)


def to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-computed indices onto ``device`` without waiting (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)
