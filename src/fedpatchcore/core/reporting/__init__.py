"""What people look at, computed from results: ROC and sPRO curves (``curves``) and the tidy
experiment table (``experiments``), and what every figure draws alike (``style``). Drawing and
HTML live with the report pipeline.

Imports: every stage up to ``explain``.
"""
