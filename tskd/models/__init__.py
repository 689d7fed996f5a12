"""Models: the two-stream network (``components``) and the training system built around it."""
