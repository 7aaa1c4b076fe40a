"""The sharpenable network's parts: spiking activations, decoders, losses, sharpeners, tracing."""
