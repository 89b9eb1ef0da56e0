"""Typed Python clients for the project's models over Triton HTTP and gRPC."""
