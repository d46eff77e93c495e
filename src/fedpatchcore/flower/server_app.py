"""The ServerApp of a deployed federation (``flwr run flower_app <SuperLink connection>``).

It opens the Kedro project at run config ``project-path`` (``env``: its conf environment,
``variant``: which federated variant, default ``federated``), runs that variant's rounds with
:func:`fedpatchcore.flower.rounds.serve`, and persists every round through the project's catalog
(``<variant>.global_bank_round_<r>``, ``<variant>.memory_bank``, ``<variant>.round_<r>_report``),
so ``kedro run --pipeline evaluate`` scores the global bank; a restarted run resumes after the
last persisted round. ``<variant>.flower_traffic`` records what crossed the network.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpatchcore.flower.project import project_from_run_config
from fedpatchcore.flower.rounds import CatalogRoundStore, FederationPlan, serve

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    project, variant = project_from_run_config(context.run_config)
    plan = FederationPlan.from_variant(variant)
    logger.info("Federating variant %s of %s: clients %s, %d round(s)", plan.variant, project.path, plan.client_ids, plan.rounds)
    result = serve(grid, plan, CatalogRoundStore(project.catalog))
    project.catalog.save(f"{plan.variant}.flower_traffic", result.traffic_summary())
    logger.info("Global bank rows per category %s", result.reports[-1]["bank_rows"])
