"""Tests of tskd.metrics: the protocol maths, re-ranking and the DDP-safe metric."""
