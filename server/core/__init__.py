"""The transport-free service: deployments' workers and admission, cancellation, Inspect sessions,
shadow mirroring. Testable without gRPC.
"""
