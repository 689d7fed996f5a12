"""Ranked lists as pictures: ``python -m tskd.apps.visualize ckpt=path/to/last.ckpt [mode=indoor]``.

Each row of the PNG grid is one query: its image (bordered in its modality's colour), then its
top-k gallery images, each with a green border when the identity is right and red when wrong,
captioned with the cosine similarity and the gallery image's modality and camera. The caption
strips are coloured by modality (infrared purple, visible blue), so a cross-modality search
reads at a glance: a purple query beside blue results. A title line per row gives the setting,
trial, the query's rank-1 correctness and its AP. The ranking, the camera rule and the AP are the
metric's own (:mod:`tskd.metrics.functional`): for SYSU-MM01 a cam3 query does not see cam2
gallery images, for LLCM a query does not see its own identity from its own camera.

The grid is written to ``<run dir>/ranked_lists/<setting>_trial<t>_<queries>.png`` with a
``.json`` beside it listing every row (indices, paths, identities, similarities). Options are
under ``vis.*`` in ``configs/visualize.yaml``; the dataset (name, root, image size, split)
comes from the checkpoint as in ``eval.py`` (``dataset.root=...`` for data that was moved), and
only the test images are cached.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont

from tskd.config import CONFIGS, EvalConfig, register, validate
from tskd.core.checks import either, integer, number, one_of, optional
from tskd.core.errors import ConfigError, DatasetError
from tskd.core.files import folder_problem
from tskd.core.schema import MAY_DIFFER, Schema, group
from tskd.core.schema import setting as checked
from tskd.data import registry
from tskd.data.protocol import INFRARED, MODALITY_NAMES, VISIBLE, DatasetProtocol
from tskd.features.images import FEATURES
from tskd.metrics.functional import per_query, ranked_order, removed_mask

log = logging.getLogger(__name__)

# Layout in pixels (the test computes the picture size from these).
BORDER = 5  # coloured frame around every tile
PAD = 8  # margin and gap between tiles / rows
SEP = 24  # gap between the query and its results (holds the separator arrow)
LINE_H = 13  # one caption line
TITLE_H = 16  # the title line above each row
CAPTION_LINES = 2
GREEN, RED = (22, 163, 74), (220, 38, 38)
MODALITY_COLOURS = {VISIBLE: (37, 99, 235), INFRARED: (126, 34, 206)}
BACKGROUND, INK, GREY = (255, 255, 255), (20, 20, 20), (150, 150, 150)
DOT = "  ·  "  # caption separator; the default font's spaces are narrow, so two of them
QUERY_DRAWS = ("worst", "random")  # vis.queries, besides a list of protocol indices


def _indices(v) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                           and x >= 0 for x in v)
    return None if ok else "a list of protocol indices such as [0,12,40]"


def _writable_folder(v) -> str | None:
    """``vis.out_dir``: a folder the pictures can be written to (or made in)."""
    if not isinstance(v, str) or not v:
        return "a folder you can write"
    why = folder_problem(v)
    return None if why is None else f"a folder you can write ({why})"


def _settings() -> list[str]:
    """Every setting of every registered dataset (the checkpoint's is known only later)."""
    return list(dict.fromkeys(s for n in registry.names() for s in registry.get(n).settings))


@dataclass(kw_only=True)
class VisConfig(Schema):
    """``vis`` (configs/visualize.yaml): which queries, how many results, how big.

    (``checked`` is :func:`tskd.core.schema.setting`: a field here is called ``setting``.)
    """

    num_queries: int = checked(integer(1), resume=MAY_DIFFER)
    topk: int = checked(integer(1), resume=MAY_DIFFER)
    queries: Any = checked(either(one_of(QUERY_DRAWS), _indices), resume=MAY_DIFFER)
    trial: int | None = checked(optional(integer(0)), resume=MAY_DIFFER)
    setting: str | None = checked(optional(one_of(_settings)), resume=MAY_DIFFER)
    feature: str = checked(one_of(FEATURES), resume=MAY_DIFFER)
    scale: float = checked(number(0, strict=True), resume=MAY_DIFFER)
    out_dir: str | None = checked(optional(_writable_folder), resume=MAY_DIFFER)
    seed: int = checked(integer(0), resume=MAY_DIFFER)


@dataclass(kw_only=True)
class VisualizeConfig(EvalConfig):
    """configs/visualize.yaml composed: eval.yaml's keys and ``vis``."""

    WHAT = "ranked-list"
    DEPENDS = ("dataset.name", "vis.setting")

    vis: VisConfig = group()

    def problems(self, key: str) -> list[str]:
        """With ``dataset=...`` given, ``vis.setting`` must be one of that dataset's."""
        name, wanted = self.dataset.name, self.vis.setting
        if name is None or wanted is None or wanted in registry.get(name).settings:
            return []
        settings = list(registry.get(name).settings)
        return [f"vis.setting={wanted!r} must be one of {'|'.join(settings)} or null (set "
                "vis.setting=<value>)"]


register("visualize", VisualizeConfig)


@dataclass
class Tile:
    """One picture of a row: the image, two caption lines, its modality and correctness."""

    image: np.ndarray  # uint8 (h, w, 3)
    caption: tuple[str, str]  # line 1 plain, line 2 on the modality-coloured strip
    modality: int
    correct: bool | None = None  # None: the query (framed in its modality's colour)


@dataclass
class Row:
    """A query and its ranked results (best first)."""

    title: str
    query: Tile
    results: list[Tile]


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def grid_size(num_rows: int, topk: int, tile_h: int, tile_w: int) -> tuple[int, int]:
    """``(width, height)`` of a grid of ``num_rows`` queries with ``topk`` results each."""
    slot_w, slot_h = tile_w + 2 * BORDER, tile_h + 2 * BORDER
    row_h = TITLE_H + slot_h + CAPTION_LINES * LINE_H
    width = PAD + slot_w + SEP + topk * slot_w + (topk - 1) * PAD + PAD
    return width, PAD + num_rows * (row_h + PAD)


def _text(canvas: Image.Image, xy: tuple[int, int], text: str, width: int, height: int,
          ink=INK, bg=BACKGROUND) -> None:
    """Draw ``text`` clipped to a ``width`` x ``height`` box (long captions never overlap)."""
    box = Image.new("RGB", (max(width, 1), height), bg)
    ImageDraw.Draw(box).text((2, 1), text, fill=ink, font=_font())
    canvas.paste(box, xy)


def _tile(canvas: Image.Image, x: int, y: int, tile: Tile, size: tuple[int, int]) -> None:
    h, w = size
    if tile.correct is None:
        frame = MODALITY_COLOURS[tile.modality]
    else:
        frame = GREEN if tile.correct else RED
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x, y, x + w + 2 * BORDER - 1, y + h + 2 * BORDER - 1], fill=frame)
    img = Image.fromarray(np.asarray(tile.image, dtype=np.uint8))
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    canvas.paste(img, (x + BORDER, y + BORDER))
    slot_w, cy = w + 2 * BORDER, y + h + 2 * BORDER
    _text(canvas, (x, cy), tile.caption[0], slot_w, LINE_H)
    _text(canvas, (x, cy + LINE_H), tile.caption[1], slot_w, LINE_H, ink=(255, 255, 255),
          bg=MODALITY_COLOURS[tile.modality])


def render_ranked_list(rows: list[Row], topk: int | None = None,
                       tile_size: tuple[int, int] | None = None) -> Image.Image:
    """Draw the grid; its size is :func:`grid_size` (``rows``, ``topk``, ``tile_size``).

    Args:
        rows: One per query. Rows with fewer results than ``topk`` leave blank slots.
        topk: Result columns (default: the longest row's results).
        tile_size: ``(h, w)`` of every tile; images of another size are resized (default: the
            first query image's size).
    """
    if not rows:
        raise ConfigError("no queries to draw; choose at least one (vis.num_queries >= 1).")
    topk = topk if topk is not None else max(len(r.results) for r in rows)
    h, w = tile_size or rows[0].query.image.shape[:2]
    width, height = grid_size(len(rows), topk, h, w)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    slot_w, slot_h = w + 2 * BORDER, h + 2 * BORDER
    row_h = TITLE_H + slot_h + CAPTION_LINES * LINE_H
    for r, row in enumerate(rows):
        y0 = PAD + r * (row_h + PAD)
        _text(canvas, (PAD, y0), row.title, width - 2 * PAD, TITLE_H)
        y = y0 + TITLE_H
        _tile(canvas, PAD, y, row.query, (h, w))
        # separator with an arrow head: "query -> results"
        sx, my = PAD + slot_w + SEP // 2, y + slot_h // 2
        draw.line([sx, y, sx, y + slot_h], fill=GREY, width=2)
        draw.polygon([(sx - 5, my - 6), (sx + 6, my), (sx - 5, my + 6)], fill=GREY)
        for j, tile in enumerate(row.results[:topk]):
            _tile(canvas, PAD + slot_w + SEP + j * (slot_w + PAD), y, tile, (h, w))
    return canvas


# ------------------------------------------------------------------------------- ranking
@dataclass
class Ranking:
    """Every query's ranked gallery (positions into the search's gallery array)."""

    order: np.ndarray  # (Q, G) gallery positions, best first; removed items last
    sims: np.ndarray  # (Q, G) cosine similarity in that order
    kept: np.ndarray  # (Q, G) bool: False for items the camera rule removes
    correct: np.ndarray  # (Q, G) bool: same identity and kept
    ap: np.ndarray  # (Q,) average precision, NaN when no correct item is kept
    first_hit: np.ndarray  # (Q,) 1-based position of the first correct item, 0 when none


def rank(q_feats: np.ndarray, g_feats: np.ndarray, q_pids, g_pids, q_cams, g_cams,
         metric: str) -> Ranking:
    """Rank as the metric does: cosine similarity, its stable order, camera rule and AP.

    Args:
        q_feats: (Q, C) L2-normalised query features.
        g_feats: (G, C) gallery features.
        q_pids, g_pids, q_cams, g_cams: Identities and cameras of both sides.
        metric: The dataset's metric (``DatasetProtocol.metric``): its camera rule decides what
            each query does not see.
    """
    sims = np.asarray(q_feats, np.float32) @ np.asarray(g_feats, np.float32).T  # (Q, G)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    removed = removed_mask(metric, q_pids, q_cams, g_pids, g_cams)
    order = ranked_order(-sims, removed)
    rows = np.arange(len(sims))[:, None]
    kept = ~removed[rows, order]
    correct = (g_pids[order] == q_pids[:, None]) & kept
    numbers = per_query(metric, -sims, q_pids, g_pids, q_cams, g_cams)
    ap = np.where(numbers["matches"] > 0, numbers["ap"], np.nan)
    first_hit = np.where(correct.any(1), correct.argmax(1) + 1, 0)
    return Ranking(order, sims[rows, order], kept, correct, ap, first_hit)


def select_queries(ranking: Ranking, query_index: np.ndarray, how, num: int, seed: int = 0
                   ) -> np.ndarray:
    """Positions (into the search's query array) of the queries to draw.

    Args:
        ranking: From :func:`rank`.
        query_index: The search's query protocol indices.
        how: ``"worst"`` (lowest AP; ties: first correct match furthest down), ``"random"``,
            or a list of protocol indices.
        num: How many (worst / random).
        seed: Seed of the random draw.
    """
    answerable = np.flatnonzero(ranking.first_hit > 0)  # the protocol skips the others
    if how in QUERY_DRAWS and len(answerable) == 0:
        raise DatasetError("no query of this search has a correct match in its gallery, so "
                           "none can be ranked by AP; pass vis.queries as a list of indices.")
    if isinstance(how, str) and how == "worst":
        worst = np.lexsort((-ranking.first_hit[answerable], ranking.ap[answerable]))
        return answerable[worst[:num]]
    if isinstance(how, str) and how == "random":
        rng = np.random.default_rng(seed)
        return rng.choice(answerable, size=min(num, len(answerable)), replace=False)
    if isinstance(how, str | int) or how is None:
        raise ConfigError(f"vis.queries={how!r}; use worst, random or a list of protocol "
                           "indices such as [0,12,40].")
    where = {int(p): i for i, p in enumerate(query_index)}
    missing = [int(p) for p in how if int(p) not in where]
    if missing:
        raise ConfigError(
            f"vis.queries {missing} are not queries of this search (its query protocol indices "
            f"are {int(query_index.min())}..{int(query_index.max())}, {len(query_index)} of "
            "them); pick indices from that range."
        )
    return np.array([where[int(p)] for p in how], dtype=np.int64)


def build_rows(ranking: Ranking, picked: np.ndarray, search, protocol, images, topk: int
               ) -> tuple[list[Row], list[dict]]:
    """Tiles and titles of the picked queries, plus the same facts as JSON-ready dicts."""
    rows, facts = [], []
    for qpos in picked:
        qi = int(search.query[qpos])
        q_mod = int(protocol.modality[qi])
        query = Tile(np.asarray(images[qi]), (f"query{DOT}id {protocol.pids[qi]}",
                     f"{MODALITY_NAMES[q_mod]}{DOT}cam{protocol.cams[qi]}"), q_mod)
        results, listed = [], []
        for j in range(min(topk, int(ranking.kept[qpos].sum()))):
            gi = int(search.gallery[ranking.order[qpos, j]])
            ok, sim = bool(ranking.correct[qpos, j]), float(ranking.sims[qpos, j])
            g_mod = int(protocol.modality[gi])
            line1 = f"{sim:.2f}" + ("" if ok else f"{DOT}id {protocol.pids[gi]}")
            results.append(Tile(np.asarray(images[gi]),
                                (line1, f"{MODALITY_NAMES[g_mod]}{DOT}cam{protocol.cams[gi]}"),
                                g_mod, ok))
            listed.append({"index": gi, "path": protocol.paths[gi], "pid": int(protocol.pids[gi]),
                           "cam": int(protocol.cams[gi]), "similarity": sim, "correct": ok})
        ap, first = float(ranking.ap[qpos]), int(ranking.first_hit[qpos])
        r1 = "correct" if ranking.correct[qpos, 0] else "wrong"
        ap_text = f"AP {ap:.2f}{DOT}first match #{first}" if first else "no match in gallery"
        title = DOT.join([search.setting, f"trial {search.trial}", f"query {qi}",
                          f"rank-1 {r1}", ap_text])
        rows.append(Row(title, query, results))
        facts.append({"index": qi, "path": protocol.paths[qi], "pid": int(protocol.pids[qi]),
                      "cam": int(protocol.cams[qi]), "modality": MODALITY_NAMES[q_mod],
                      "ap": None if np.isnan(ap) else ap, "first_match": first,
                      "results": listed})
    return rows, facts


# ------------------------------------------------------------------------------ the app
def _resolve_data(c: VisualizeConfig, overrides: list[str], ckpt: dict, setting: str | None):
    """The test datamodule as eval resolves it, built for the drawn setting (and trial) only."""
    from tskd.checkpoints.eval_data import eval_dataset, resolve_test_datamodule

    d = eval_dataset(c, ckpt, overrides)  # cheap: the checks only, before any data work
    spec = registry.get(d.name)
    _check_setting(setting, spec)
    settings = (setting,) if setting else None
    if spec.trial_selects_training:
        if c.vis.trial is not None and c.vis.trial != d.trial:
            raise ConfigError(f"vis.trial={c.vis.trial} but the {spec.title} split is "
                              f"{d.trial}; {spec.title} has one gallery per split: drop "
                              "vis.trial.")
        return resolve_test_datamodule(c, ckpt, overrides, dataset=d, settings=settings)
    trial = c.vis.trial if c.vis.trial is not None else (d.trial or 0)
    return resolve_test_datamodule(c, ckpt, overrides, dataset=d, trial=trial,
                                   settings=settings)


def _check_setting(setting: str | None, spec: DatasetProtocol) -> None:
    """``vis.setting`` is one of the dataset's searches (known once the checkpoint is read)."""
    if setting is not None and setting not in spec.settings:
        raise ConfigError(f"bad ranked-list options: vis.setting={setting!r} (use one of "
                          f"{list(spec.settings)} or null for {spec.name}).")


def write_ranked_lists(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Draw the ranked lists ``cfg.vis`` asks for; returns the PNG written (JSON beside it)."""
    import torch

    from tskd.checkpoints.loading import build_module, load_checkpoint
    from tskd.features.protocol import embed_protocol

    c = validate(cfg, VisualizeConfig)  # before any data or model is loaded
    vis = c.vis
    how = vis.queries
    ckpt = load_checkpoint(c.ckpt)
    dm = _resolve_data(c, list(overrides or []), ckpt, vis.setting)
    protocol = dm.protocol
    setting = vis.setting or dm.settings[0]  # SYSU: mode; RegDB, LLCM: the first direction
    search = next(s for s in protocol.searches if s.setting == setting)
    if c.eval.rerank:
        log.warning("eval.rerank is on, but ranked lists show the plain cosine ranking")
    # flip is applied by embed_protocol, so the module itself must not flip as well
    module = build_module(ckpt, c.ckpt, eval=dataclasses.replace(c.eval, flip=False),
                          channels_last=False)
    gpu = c.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    module.to(device)
    feats = embed_protocol(module.embed, dm.test_images, protocol,
                           batch_size=c.data.test_batch_size, flip=c.eval.flip,
                           device=device)
    row_of = {int(i): r for r, i in enumerate(np.asarray(feats["index"]))}
    f = np.asarray(feats[vis.feature], dtype=np.float32)  # (needed, C), rows as feats["index"]
    q = f[[row_of[int(i)] for i in search.query]]
    g = f[[row_of[int(i)] for i in search.gallery]]
    ranking = rank(q, g, protocol.pids[search.query], protocol.pids[search.gallery],
                   protocol.cams[search.query], protocol.cams[search.gallery],
                   metric=registry.get(protocol.dataset).metric)
    picked = select_queries(ranking, search.query, how, int(vis.num_queries), int(vis.seed))
    rows, facts = build_rows(ranking, picked, search, protocol, dm.test_images, int(vis.topk))
    h, w = dm.size
    tile = (max(1, round(h * float(vis.scale))), max(1, round(w * float(vis.scale))))
    topk = min(int(vis.topk), len(search.gallery))
    image = render_ranked_list(rows, topk=topk, tile_size=tile)
    out_dir = Path(vis.out_dir) if vis.out_dir else Path(c.paths.output_dir) / "ranked_lists"
    out_dir.mkdir(parents=True, exist_ok=True)
    label = how if isinstance(how, str) else "chosen"
    png = out_dir / f"{setting}_trial{search.trial}_{label}.png"
    image.save(png)
    png.with_suffix(".json").write_text(json.dumps(
        {"checkpoint": str(c.ckpt), "setting": setting, "trial": search.trial,
         "feature": vis.feature, "queries": facts}, indent=1))
    log.info("wrote %s (%d x %d, %d queries, top-%d)", png, image.width, image.height,
             len(rows), topk)
    return png


# The configs folder the package carries (an installed wheel) or the checkout's (tskd.config).
@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="visualize")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from tskd.core.entry import record_failure

    with record_failure(cfg.paths.output_dir):
        write_ranked_lists(cfg, overrides=list(HydraConfig.get().overrides.task))


def cli() -> int:
    """``tskd-visualize`` / ``python -m tskd.apps.visualize``: the app, guarded like train/eval
    (SIGTERM/Ctrl-C: status.json says "interrupted", exit status 128 + signal)."""
    from tskd.core.entry import guarded

    return guarded(main)


if __name__ == "__main__":
    import sys

    sys.exit(cli())
