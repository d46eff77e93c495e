"""Judging results: the benchmarks' metrics (``metrics``: image AUC-ROC, AUC-sPRO with AutoVI /
MVTec LOCO semantics, pixel AUROC, PRO), anomaly maps in the official evaluators' layout
(``export``) and the membership-inference attack on a released bank (``membership_audit``).

Imports: every stage up to ``scoring``.
"""
