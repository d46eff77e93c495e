"""From images to patch features: ImageNet-pretrained backbones loaded offline (``backbones``),
PatchCore's locally aware patch embedding (``embedding``; exported to ONNX and run by ONNX Runtime:
``onnx_embedder``), decoded image batches (``batches``),
streamed extraction into float16 feature files (``extraction``, ``feature_store``), the seeded
public random projection (``projection``), a category's setting: which network, input size
and image score it runs with (``setting``), and the run's tuned per-category settings (a
category's ``tuned`` entry, else the run's own blocks: ``tuned_settings``).

Imports: ``common``, ``data``.
"""
