"""gRPC transport: the server and its lifecycle, the error-mapping interceptor, the thin servicer,
protobuf <-> plain conversion, the tensor wire codec, and the Python client.
"""
