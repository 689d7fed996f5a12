"""Evaluate a checkpoint: python eval.py mode=indoor ckpt=path/to/last.ckpt

Dataset, root, split, image size and backbone come from the checkpoint (dataset.root=... when the
data moved). Writes metrics.json in the Hydra run dir and prints the results table. See
configs/eval.yaml.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tskd.core.entry import guarded, record_failure


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with record_failure(cfg.paths.output_dir):
        # Imported in here: the import takes seconds (torch), and a signal or an import error
        # during it must be recorded in status.json like any other.
        from tskd.runner.run import evaluate_checkpoint

        metrics = evaluate_checkpoint(cfg, overrides=list(HydraConfig.get().overrides.task))
    return (metrics.get("mean") or {}).get("rank1")


if __name__ == "__main__":
    # SIGTERM/Ctrl-C: status.json says "interrupted", exit status 128 + signal.
    sys.exit(guarded(main))
