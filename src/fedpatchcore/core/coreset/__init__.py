"""Choosing a coreset: approximate greedy k-center with O(N) memory (``kcenter``), the skipping
loop that gives the same rows faster (``skipping``), and k-center over a streamed feature file
(``streaming``).

Imports: ``common``, ``data``, ``features``.
"""
