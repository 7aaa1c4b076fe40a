"""The writers of a deployable :class:`~whetstone.graph.nodes.SpikingGraph` (optional extra ``export``): NIR
(:mod:`whetstone.export.nir`, which also reads NIR files back), ONNX (:mod:`whetstone.export.onnx`) and the
8-bit ONNX network (:mod:`whetstone.export.onnx_integer`). Every file is written atomically: complete, or
not at all.

These are the formats; what to write for which consumer is :func:`whetstone.targets.export`, the one
entry point (``export(graph, "model.nir", target="speck")``), which rewrites the graph for its target and
then calls the writer here.
"""
