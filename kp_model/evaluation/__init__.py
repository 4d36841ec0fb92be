"""Evaluation: the one place where PCK, the mean normalised error, the reference box and the masking of invisible
points are defined (kp_model.evaluation.metrics), and the support/query protocols of the benchmarks."""
