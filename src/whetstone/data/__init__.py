"""The data: dataset files read and checked, and the in-memory loader that batches them."""
