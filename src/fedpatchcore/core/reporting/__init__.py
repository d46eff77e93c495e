"""What people look at, computed from results: ROC and sPRO curves (``curves``), the tidy
experiment table (``experiments``), what every figure draws alike (``style``) and the figures
drawn from them, an explanation's included (``figures``). The HTML page lives with the report
pipeline.

Imports: every stage up to ``explain``.
"""
