"""Serving: Triton (pytriton locally, NGC container in production), the gRPC client, online A/B replay."""
