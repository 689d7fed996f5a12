"""ProtocolEvaluation: the callback turning what test_step embeds into the protocol's summaries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.toy_protocols import sysu_protocol

from tskd.metrics.search import search_features, summarize
from tskd.models.protocol_evaluation import ProtocolEvaluation


def features(protocol, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, fc) unit features near one centre per identity, so the searches rank something."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(int(protocol.pids.max()) + 1, dim, generator=g)
    fc = centres[torch.from_numpy(protocol.pids)] + torch.randn(len(protocol.paths), dim,
                                                                generator=g)
    pool = fc + 0.5 * torch.randn(fc.shape, generator=g)
    return torch.nn.functional.normalize(pool, dim=1), torch.nn.functional.normalize(fc, dim=1)


class FakeModule:
    """What the callback uses of a LightningModule: its device and ``log``."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kw) -> None:
        self.logged[name] = value


def test_a_test_pass_returns_the_engines_summaries_and_logs_each_setting():
    protocol = sysu_protocol(num_ids=7, trials=3, shots=2)
    pool, fc = features(protocol)
    needed = protocol.needed()
    engine = summarize(search_features(
        {"index": needed, "pool": pool[needed], "fc": fc[needed]}, protocol), protocol)
    evaluation, module, trainer = ProtocolEvaluation(protocol), FakeModule(), SimpleNamespace()
    with pytest.raises(RuntimeError, match="no test pass has finished"):
        evaluation.result()
    evaluation.on_test_epoch_start(trainer, module)
    for b, start in enumerate(range(0, len(needed), 5)):  # test_step's outputs, batch by batch
        i = torch.from_numpy(needed[start:start + 5])
        outputs = {"pool": pool[i], "fc": fc[i],
                   "modality": torch.from_numpy(protocol.modality)[i], "index": i}
        evaluation.on_test_batch_end(trainer, module, outputs, None, b)
    evaluation.on_test_epoch_end(trainer, module)
    assert evaluation.result() == engine
    all_fc = next(s for s in engine if s["mode"] == "all" and s["feature"] == "fc")
    assert module.logged["test/all_fc_rank1"] == pytest.approx(all_fc["mean"]["rank1"])
    assert module.logged["test/indoor_pool_mAP"] > 0
    assert len(module.logged) == len(engine) * 3  # rank1, mAP, mINP per setting and feature
    # a monitor pass is logged under its own prefix and leaves the test result alone
    evaluation.on_validation_epoch_start(trainer, module)
    i = torch.from_numpy(needed)
    evaluation.on_validation_batch_end(trainer, module, {
        "pool": pool[i], "fc": fc[i], "modality": torch.from_numpy(protocol.modality)[i],
        "index": i}, None, 0)
    evaluation.on_validation_epoch_end(trainer, module)
    assert module.logged["monitor/all_fc_rank1"] == module.logged["test/all_fc_rank1"]
    assert evaluation.result() == engine
