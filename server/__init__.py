"""The sidecar service: config, errors, metrics and the CLI at the top; sub-packages by responsibility.

Imports point one way: cli -> harness -> offline -> rpc -> core -> pipelines; the flat modules
(config, errors, metrics, report) are the base every sub-package may use, and use none of them.
"""
