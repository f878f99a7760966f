"""Evaluations on trained checkpoints that the training code never imports."""
