"""Datasets: raw layouts (SYSU-MM01, RegDB, synthetic), image cache, samplers and the datamodule."""
