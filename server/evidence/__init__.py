"""Evidence: bundles of what flagged requests looked like (report, image, x0_hat previews, per-step
statistics), kept in a file or object store for a person to look at, and their HTML view.

Nothing here runs on the request path: core/evidence.py hands finished requests to a writer thread.
"""
