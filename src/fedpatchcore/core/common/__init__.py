"""What every stage uses: seeded randomness (``seeding``), devices and thread counts
(``runtime``), integer quota arithmetic (``quotas``), the fingerprint of a piece of
work (``fingerprint``: which work variants share, a Flower site reuses or a server resumes)
and the error for input a user can fix (``errors``).

Imports: nothing of fedpatchcore.
"""
