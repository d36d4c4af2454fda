"""Model builders (torchvision families adapted to small inputs, tiny test nets) and model I/O."""
