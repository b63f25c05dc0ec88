"""Deployments and what runs them: loading (built-in, folder, hub), model families, quantized
variants, the built-in tiny models, request validation, the guarded pipeline runner, trajectory
recording, and the shipped calibration profiles.
"""
