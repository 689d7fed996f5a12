"""The test protocol's searches, run on what the module embeds: a Lightning callback.

The module's ``test_step``/``validation_step`` embed one batch of the test loader and return
``{"pool", "fc", "modality", "index"}``; :class:`ProtocolEvaluation` owns the test protocol it
was given and a :class:`~tskd.metrics.retrieval.RetrievalMetric`, feeds it every batch, and at
the end of the pass computes every (setting, feature) summary over all ranks' images. A test
pass's summaries come back from :meth:`ProtocolEvaluation.result`; monitor passes (validation
during training) are only logged, never used to pick a checkpoint.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from tskd.data.protocol import TestProtocol
from tskd.metrics.retrieval import RetrievalMetric
from tskd.metrics.search import setting_of

REPORTED = ("rank1", "mAP", "mINP")  # logged per setting and feature


class ProtocolEvaluation(pl.Callback):
    """Runs ``protocol``'s searches on each test (and monitor) pass of the trainer.

    Args:
        protocol: The test images and searches the test loader serves (its ``index`` values).
        rerank: k-reciprocal re-ranking (``eval.rerank``).
    """

    def __init__(self, protocol: TestProtocol, rerank: bool = False) -> None:
        self.protocol = protocol
        self.rerank = rerank
        self._metric: RetrievalMetric | None = None
        self._summaries: list[dict] | None = None

    def result(self) -> list[dict]:
        """The summaries of the last finished test pass (one dict per setting and feature).

        Raises:
            RuntimeError: No test pass has finished with this callback attached.
        """
        if self._summaries is None:
            raise RuntimeError("ProtocolEvaluation.result(): no test pass has finished; pass "
                               "this callback to the Trainer that runs trainer.test(...)")
        return self._summaries

    # ------------------------------------------------------------------ one pass's metric
    def _start(self, module: pl.LightningModule) -> None:
        self._metric = RetrievalMetric(self.protocol, rerank=self.rerank).to(module.device)

    def _update(self, module: pl.LightningModule, outputs: dict) -> None:
        index = outputs["index"]
        rows = index.cpu().numpy()
        as_t = lambda a: torch.as_tensor(a[rows], device=module.device)  # noqa: E731
        self._metric.update(outputs["pool"].float(), outputs["fc"].float(),
                            as_t(self.protocol.pids), as_t(self.protocol.cams),
                            outputs["modality"], index)

    def _finish(self, module: pl.LightningModule, prefix: str) -> list[dict]:
        summaries = self._metric.compute()
        self._metric = None
        for s in summaries:
            for key in REPORTED:
                module.log(f"{prefix}/{setting_of(s)}_{s['feature']}_{key}", float(s["mean"][key]),
                           rank_zero_only=True, sync_dist=False)
        return summaries

    # ----------------------------------------------------------------------------- hooks
    def on_test_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._summaries = None
        self._start(module)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx,
                          dataloader_idx: int = 0) -> None:
        self._update(module, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._summaries = self._finish(module, "test")

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start(module)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        self._update(module, outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._finish(module, "monitor")  # test-protocol curves only: never picks a checkpoint
