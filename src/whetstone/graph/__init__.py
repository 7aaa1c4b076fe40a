"""The deployable network as data, and what computes on it exactly: the simulator, integer weights."""
