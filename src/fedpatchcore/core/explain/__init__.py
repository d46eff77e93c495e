"""Why an image was flagged: its most anomalous patches, their nearest bank rows, Grad-CAM and
input gradients of the score, SHAP values over embedding dimensions (``attribution``), and one
image's whole explanation with the rule that only the asking client's pixels are shown
(``explanation``).

Imports: every stage up to ``tuning``.
"""
