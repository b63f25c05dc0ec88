"""Generated protobuf and gRPC code for latentguard.v1 (see guardrail.proto; `make protos`)."""
