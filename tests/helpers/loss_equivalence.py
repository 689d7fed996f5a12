"""Old and new loss forms side by side: bit-identity of value and gradient, host reads per call.

Shared by ``tests/test_optimisations.py`` and ``benchmarks/optimisations.py`` (the benchmark
imports it from here; a test never imports a benchmark). The old forms are the copies in
:mod:`helpers.before_issue12`.
"""

from __future__ import annotations

import torch
from helpers import before_issue12 as old
from torch.utils._pytree import tree_map

from tskd.losses import BatchHardTriplet, MutualDistillationLoss, PrototypeBank, SelfMimicLoss

aten = torch.ops.aten


# ------------------------------------------------------------------ counting host reads
class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for a GPU one: counts the ops that would make the host wait.

    Those are the ops whose result the host reads or whose output size depends on values:
    ``.item()``/``int()``/``bool()`` (``_local_scalar_dense``), ``tolist``, ``nonzero``,
    boolean-mask indexing, ``masked_select``, ``torch.unique`` and copies to the CPU. Results
    of ops on a DeviceTensor are DeviceTensors; a copy to the CPU is a plain (host) tensor.
    """

    reads = 0

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, device=elem.device, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self) -> str:
        return f"DeviceTensor({self.elem!r})"

    def tolist(self):
        DeviceTensor.reads += 1
        return self.elem.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        plain = tree_map(lambda t: t.elem if isinstance(t, DeviceTensor) else t, (args, kwargs))
        if func in (aten._local_scalar_dense.default, aten.nonzero.default,
                    aten.masked_select.default, aten._unique2.default):
            DeviceTensor.reads += 1
        elif func is aten.index.Tensor and any(
                t is not None and t.dtype == torch.bool for t in args[1]):
            DeviceTensor.reads += 1
        elif func is aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
            DeviceTensor.reads += 1
            return func(*plain[0], **plain[1])  # a host tensor
        out = func(*plain[0], **plain[1])
        return tree_map(lambda t: DeviceTensor(t) if isinstance(t, torch.Tensor) else t, out)


def count_reads(fn) -> int:
    DeviceTensor.reads = 0
    fn()
    return DeviceTensor.reads


# ------------------------------------------------------------------------- loss inputs
def loss_inputs(p: int, k: int, dim: int, num_classes: int, seed: int = 0,
                all_prototypes: bool = True) -> dict:
    """A stage-II step's loss inputs: 3B features [view1; view2; ir], B = P*K aligned slots."""
    g = torch.Generator().manual_seed(seed)
    b = p * k
    ids = torch.randperm(num_classes, generator=g)[:p]
    labels = ids.repeat_interleave(k)
    feats = torch.randn(3 * b, dim, generator=g)
    bank = PrototypeBank(num_classes, dim=dim)
    seen = ids if all_prototypes else ids[: p // 2]  # others: no prototype yet
    rows = torch.isin(labels, seen)
    slots3 = torch.arange(3).repeat_interleave(b)
    bank.accumulate(torch.randn(3 * b, dim, generator=g)[rows.repeat(3)],
                    labels.repeat(3)[rows.repeat(3)], slots3[rows.repeat(3)],
                    torch.ones(int(rows.sum()) * 3))
    bank.finalize()
    return {"feats": feats, "labels": labels, "labels3": labels.repeat(3), "slots": slots3,
            "modality": (slots3 == 2).long(), "weights": torch.rand(3 * b, generator=g),
            "bank": bank, "b": b}


def loss_calls(x: dict, device_tensors: bool = False) -> dict:
    """name -> (old call, new call); each call takes features and returns the loss."""
    wrap = DeviceTensor if device_tensors else (lambda t: t)
    lab, lab3, slots, mod, w = (wrap(x[k]) for k in ("labels", "labels3", "slots", "modality",
                                                      "weights"))
    bank = x["bank"]
    if device_tensors:
        bank = PrototypeBank(bank.num_ids, dim=bank.dim)
        bank.load_state_dict(x["bank"].state_dict())
        bank.prototypes, bank.valid = wrap(bank.prototypes), wrap(bank.valid)
    b = x["b"]
    tri, tri_old = BatchHardTriplet(), old.OldTriplet()
    tri_pm, tri_pm_old = BatchHardTriplet(per_modality=True), old.OldTriplet(per_modality=True)
    sm, sm_old = SelfMimicLoss(), old.OldSelfMimic()
    md, md_old = MutualDistillationLoss(), old.OldMutualDistillation()
    return {
        "triplet": (lambda f: tri_old(f, lab3, mod), lambda f: tri(f, lab3, mod)),
        "self-mimic": (lambda f: sm_old(f, lab3, slots, w, bank),
                       lambda f: sm(f, lab3, slots, w, bank)),
        "MD": (lambda f: md_old(f[:b], f[b:2 * b], f[2 * b:], lab),
               lambda f: md(f[:b], f[b:2 * b], f[2 * b:], lab)),
        "triplet per modality": (lambda f: tri_pm_old(f, lab3, mod),
                                 lambda f: tri_pm(f, lab3, mod)),
    }


def value_and_grad(call, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = feats.clone().requires_grad_(True)
    loss = call(f)
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), grad


def identical(x: dict, name: str) -> bool:
    before, after = loss_calls(x)[name]
    (v0, g0), (v1, g1) = value_and_grad(before, x["feats"]), value_and_grad(after, x["feats"])
    return torch.equal(v0, v1) and torch.equal(g0, g1)


def host_reads(x: dict, name: str) -> tuple[int, int]:
    before, after = loss_calls(x, device_tensors=True)[name]
    f = DeviceTensor(x["feats"]).requires_grad_(True)
    return count_reads(lambda: before(f)), count_reads(lambda: after(f))
