"""The node runtime: gRPC server and client, store, delivery worker, CLI and configuration."""
