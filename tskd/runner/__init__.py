"""What ``train.py`` and ``eval.py`` run: training and testing orchestration
(:mod:`~tskd.runner.run`), the Lightning Trainer (:mod:`~tskd.runner.trainer`), the run folder
(:mod:`~tskd.runner.run_dir`) and one run's metrics.json and printed table
(:mod:`~tskd.runner.metrics_file`). Nothing below imports it; the apps do not either."""
