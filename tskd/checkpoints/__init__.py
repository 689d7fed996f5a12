"""Checkpoints and the rules that read them: loading a checkpoint into a module
(:mod:`~tskd.checkpoints.loading`), saving one safely (:mod:`~tskd.checkpoints.saving`), when a
run may resume one (:mod:`~tskd.checkpoints.resume`) and which data a checkpoint is tested on
(:mod:`~tskd.checkpoints.eval_data`). Both the runner and the apps read them from here."""
