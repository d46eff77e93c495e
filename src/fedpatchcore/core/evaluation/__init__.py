"""Judging results: the benchmarks' metrics (``metrics``: image AUC-ROC, AUC-sPRO with AutoVI /
MVTec LOCO semantics, pixel AUROC, PRO), anomaly maps in the official evaluators' layout
(``export``), the membership-inference attack on a released bank (``membership_audit``) and
a run's published summary: metrics, fairness, clients, communication, privacy (``run_summary``).

Imports: every stage up to ``scoring``.
"""
