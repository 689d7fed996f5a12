"""Train TSKD: python train.py [experiment=...] [dataset=...] [key=value ...]

Saves checkpoints/last.ckpt in the Hydra run dir, then runs the full test protocol on the last
epoch and writes metrics.json. See configs/train.yaml and README.md.
"""

import sys

import hydra
from omegaconf import DictConfig

from tskd.entry import guarded, record_failure


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from tskd.run import train

    with record_failure(cfg.paths.output_dir):
        metrics = train(cfg)
    return (metrics.get("mean") or {}).get("rank1")


if __name__ == "__main__":
    # SIGTERM/Ctrl-C: status.json says "interrupted", exit status 128 + signal.
    sys.exit(guarded(main))
