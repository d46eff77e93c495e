"""What every stage uses: seeded randomness (``seeding``), devices and thread counts
(``runtime``), and integer quota arithmetic (``quotas``).

Imports: nothing of fedpatchcore.
"""
