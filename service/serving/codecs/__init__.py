"""One module per protocol: a request's bytes into a model reference and a float32 batch, outputs into the
answer's bytes, and the protocol's own error format. No HTTP framework objects inside."""
