"""What every stage uses: seeded randomness (``seeding``), devices and thread counts
(``runtime``), integer quota arithmetic (``quotas``), and the error for input a user can fix
(``errors``).

Imports: nothing of fedpatchcore.
"""
