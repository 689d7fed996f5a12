"""The command-line apps: ``python -m tskd.apps.<name>`` (or ``tskd-<name>``) for visualize
(ranked lists), embed (features of image files), export (ONNX / TorchScript) and report (a
sweep's summary). They read checkpoints and policies from :mod:`tskd.checkpoints`, never the
runner."""
