"""The option sets of the ``supervision`` config group, owned here and imported by the schema."""

SUPERVISION_MODES = ("full", "noisy", "weak")
# per_identity: the labelled fraction of each identity's images per modality (at least one);
# global: drawn over each modality's images without stratification (the code family's draw).
LABEL_SPLITS = ("per_identity", "global")
