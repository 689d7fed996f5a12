"""Which training labels a run sees: full, noisy (DART's draw) or weak (a labelled fraction plus
pseudo-labels). docs/method.md, "Supervision"."""
