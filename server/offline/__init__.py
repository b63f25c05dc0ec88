"""Batch jobs that are not on the serving path: calibration, A/B comparison (sources, statistics,
report), and their prompt sets.
"""
