"""A variant's rounds through Flower's simulation engine, inside one process (one Kedro node).

Each simulated SuperNode ``i`` is the client at position ``i`` of the partition and gets, as
its node config, only its own training-image table (the node config a real site would get
from its operator); the ServerApp is :func:`fedpatchcore.flower.rounds.serve`, as deployed.
The engine is Flower's Ray backend: ``federation.flower.num_cpus`` CPUs in all,
``federation.flower.client_cpus`` per client (how many clients work at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fedpatchcore.flower.rounds import FederationPlan, FederationResult, serve

logger = logging.getLogger(__name__)

# Offline by default: no Flower telemetry, no Ray usage statistics, no update check.
OFFLINE_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
DEFAULT_NUM_CPUS = 2
DEFAULT_CLIENT_CPUS = 1


def backend_config(flower: Mapping[str, Any]) -> dict[str, Any]:
    """Ray resources for the simulation: sized for a 2-core machine unless the block says otherwise."""
    num_cpus = int(flower.get("num_cpus") or DEFAULT_NUM_CPUS)
    client_cpus = float(flower.get("client_cpus") or DEFAULT_CLIENT_CPUS)
    if client_cpus > num_cpus:
        raise ValueError(f"federation.flower.client_cpus={client_cpus} exceeds federation.flower.num_cpus={num_cpus}")
    return {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": True},
    }


@contextlib.contextmanager
def offline_environment() -> Iterator[None]:
    """:data:`OFFLINE_ENVIRONMENT` for the duration of a simulation (Ray's workers inherit it).

    Only variables the user has not set are added, and they are removed again afterwards, so
    the process's environment is as it was once the simulation is over.
    """
    added = {key: value for key, value in OFFLINE_ENVIRONMENT.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def simulate(plan: FederationPlan, node_configs: Sequence[Mapping[str, Any]], mods: Sequence = ()) -> FederationResult:
    """Run ``plan`` with one simulated SuperNode per entry of ``node_configs`` (partition order).

    ``mods``: Flower ClientApp mods wrapped around every client (tests inject faults with them).
    """
    with offline_environment():
        return _simulate(plan, node_configs, mods)


def _simulate(plan: FederationPlan, node_configs: Sequence[Mapping[str, Any]], mods: Sequence) -> FederationResult:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedpatchcore.flower.client_app import make_client_app

    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["result"] = serve(grid, plan)
        except BaseException as exc:  # re-raised below, outside Flower's threads
            outcome["error"] = exc

    client_app = make_client_app({i: dict(config) for i, config in enumerate(node_configs)}, mods)
    run_simulation(
        server_app,
        client_app,
        num_supernodes=len(node_configs),
        backend_config=backend_config(plan.flower),
    )
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise RuntimeError(f"the Flower simulation of {plan.variant} ended without a result")
    return outcome["result"]
