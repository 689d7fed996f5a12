"""Train TSKD: python train.py [experiment=...] [dataset=...] [key=value ...]

Saves checkpoints/last.ckpt in the Hydra run dir, then runs the full test protocol on the last
epoch and writes metrics.json. See configs/train.yaml and README.md.
"""

import sys

import hydra
from omegaconf import DictConfig

from tskd.core.entry import guarded, record_failure


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with record_failure(cfg.paths.output_dir):
        # Imported in here: the import takes seconds (torch), and a signal or an import error
        # during it must be recorded in status.json like any other.
        from tskd.runner.run import train

        metrics = train(cfg)
    return (metrics.get("mean") or {}).get("rank1")


if __name__ == "__main__":
    # SIGTERM/Ctrl-C: status.json says "interrupted", exit status 128 + signal.
    sys.exit(guarded(main))
