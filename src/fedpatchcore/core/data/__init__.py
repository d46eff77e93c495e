"""Where images come from: dataset readers (``autovi``, ``mvtec``), the synthetic default
(``synthetic``), one index over any of them (``index``), image and mask loading (``loading``),
layout checks of a dataset folder (``layout_check``), the AutoVI download (``download``) and the
shared record types (``types``: ``Sample``, ``CategoryInfo``, ``DefectConfig``).

Imports: ``common``.
"""
