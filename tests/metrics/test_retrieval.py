"""RetrievalMetric: deduplication, protocol checks, and DDP (2 gloo processes) == one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.toy_protocols import sysu_protocol as toy_sysu_protocol
from torch.utils.data import DistributedSampler

from tskd.core.errors import InputError
from tskd.data import protocol as proto
from tskd.metrics.retrieval import RetrievalMetric
from tskd.metrics.search import search_features, summarize


def sysu_protocol(num_ids: int = 7, trials: int = 3) -> proto.TestProtocol:
    """A small SYSU-shaped protocol: IR queries, 2 images per (id, visible cam), 2 modes."""
    return toy_sysu_protocol(num_ids=num_ids, trials=trials, shots=2)


def features(protocol: proto.TestProtocol, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(int(protocol.pids.max()) + 1, dim, generator=g)
    n = len(protocol.paths)
    fc = centres[torch.from_numpy(protocol.pids)] + 1.2 * torch.randn(n, dim, generator=g)
    pool = fc + 0.5 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(pool, dim=1), torch.nn.functional.normalize(fc, dim=1)


def feed(metric: RetrievalMetric, protocol: proto.TestProtocol, rows: np.ndarray,
         batch: int) -> None:
    pool, fc = features(protocol)
    for s in range(0, len(rows), batch):
        i = torch.from_numpy(rows[s : s + batch])
        metric.update(pool[i], fc[i], torch.from_numpy(protocol.pids)[i],
                      torch.from_numpy(protocol.cams)[i], torch.from_numpy(protocol.modality)[i], i)


def single_process() -> list[dict]:
    protocol = sysu_protocol()
    metric = RetrievalMetric(protocol)
    feed(metric, protocol, protocol.needed(), batch=6)
    return metric.compute()


def test_compute_equals_the_engine_and_drops_repeats():
    protocol = sysu_protocol()
    pool, fc = features(protocol)
    needed = protocol.needed()
    engine = summarize(search_features(
        {"index": needed, "pool": pool[needed], "fc": fc[needed]}, protocol), protocol)
    metric = RetrievalMetric(protocol)
    rows = np.concatenate([needed[::-1], needed[:5]])  # any order, some images twice
    feed(metric, protocol, rows, batch=4)
    assert metric.compute() == engine
    i = torch.from_numpy(needed[:3])  # forward() only accumulates: no metrics of a partial set
    assert RetrievalMetric(protocol)(pool[i], fc[i], torch.from_numpy(protocol.pids)[i],
                                     torch.from_numpy(protocol.cams)[i],
                                     torch.from_numpy(protocol.modality)[i], i) is None
    assert [(s["mode"], s["feature"]) for s in engine] == [
        ("all", "fc"), ("all", "pool"), ("indoor", "fc"), ("indoor", "pool")]
    assert [t["trial"] for t in engine[0]["trials"]] == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric RetrievalMetric")
def test_mismatch_with_the_protocol_is_reported():
    protocol = sysu_protocol()
    pool, fc = features(protocol)
    metric = RetrievalMetric(protocol)
    i = torch.from_numpy(protocol.needed())
    cams = torch.from_numpy(protocol.cams)[i].clone()
    cams[3] = 9
    metric.update(pool[i], fc[i], torch.from_numpy(protocol.pids)[i], cams,
                  torch.from_numpy(protocol.modality)[i], i)
    with pytest.raises(InputError, match=rf"image {int(i[3])} \(img{int(i[3])}.png\) arrived "
                                           r"with cams 9 but the protocol says"):
        metric.compute()
    with pytest.raises(InputError, match="compute\\(\\) before any update"):
        RetrievalMetric(protocol).compute()
    with pytest.raises(InputError, match="pids has 2 rows but index has 3"):
        RetrievalMetric(protocol).update(pool[:3], fc[:3], i[:2], i[:3], i[:3], i[:3])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        protocol = sysu_protocol()
        needed = protocol.needed()
        sampler = DistributedSampler(range(len(needed)), num_replicas=world, rank=rank,
                                     shuffle=True, seed=3)  # pads by repeating images
        rows = needed[np.array(list(sampler))]
        metric = RetrievalMetric(protocol)
        feed(metric, protocol, rows, batch=5 + 2 * rank)  # unequal batch sizes too
        result = metric.compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_two_gloo_processes_give_exactly_the_single_process_result(tmp_path):
    assert len(sysu_protocol().needed()) % 2 == 1  # an uneven split: the sampler pads
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = json.loads(json.dumps(single_process()))
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
