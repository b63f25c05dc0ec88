"""gRPC service, pipeline runner, deployments, config and CLI."""
