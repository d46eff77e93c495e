"""Scoring test images against a memory bank: patch distances -> raw anomaly maps and image
scores (``patch_scores``; never normalised per image), one category's test images in batches
(``category``), OK/NOK thresholds from good validation scores (``thresholds``), inspecting
new images with a persisted bank (``predict``, embedding by torch or ONNX Runtime) and the
inspector folder a station runs (``inspector``).

Imports: every stage up to ``federation``.
"""
