"""From an ordinary network to a spiking one, and from a spiking model to its deployable graph."""
