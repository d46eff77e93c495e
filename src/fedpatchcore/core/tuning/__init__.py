"""Choosing settings without test images: the validation split of the training images
(``split``), seeded pseudo-anomalies with masks (``pseudo_anomalies``) and the per-category
tuner (``tuner``).

Imports: every stage up to ``evaluation``.
"""
