"""Why an image was flagged: its most anomalous patches, their nearest bank rows, Grad-CAM and
input gradients of the score, SHAP values over embedding dimensions (``attribution``).

Imports: every stage up to ``tuning``.
"""
