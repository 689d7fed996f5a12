"""Tests of the TSKD losses (tskd.losses)."""
