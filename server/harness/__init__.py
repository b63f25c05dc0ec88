"""Running the server for people and tests: the quick-start demo, `serve` as a child process, and a
server on a background event-loop thread.
"""
