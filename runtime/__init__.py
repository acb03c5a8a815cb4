"""The runtime: IR -> torch.nn.Module on the Triton or torch backend, data, training, checkpoints, CLI."""
