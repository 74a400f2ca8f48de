"""A CRI v1 (runtime.v1) gRPC client for the tests: api.proto is a subset of the upstream
API with its field numbers, api_pb2*.py are generated from it (generate.py), client.py wraps them."""
