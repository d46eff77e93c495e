"""Federation over the network with Flower: thin adapters over :mod:`fedpatchcore.core.federation`.

``client_app.py``  the ClientApp a factory site runs (SuperNode): index its own images, extract,
                   local coreset, upload -- the same functions the Kedro client lane calls.
``server_app.py``  the ServerApp (SuperLink side): send the run configuration, collect uploads,
                   validate and merge them with :func:`core.federation.server.run_round`, and
                   write the global bank where the Kedro catalog reads it.
``rounds.py``      the rounds over a Flower Grid (:func:`serve`), shared by the ServerApp and the
                   Kedro node of ``federation.engine: flower``; timeouts, size checks, resume.
``records.py``     project objects <-> Flower records (ArrayRecord, MetricRecord, ConfigRecord).
``site.py``        what one site holds and does (no Flower import).
``simulation.py``  the rounds through Flower's simulation engine inside one process.
``project.py``     open the Kedro project (parameters, catalog) a ServerApp or ClientApp serves.

Flower is imported only in this package; ``core/`` never imports it. Trying the deployment on
one machine (SuperLink + SuperNodes as processes, TLS, node auth) is checkout tooling:
``scripts/flower_loopback.py``.
"""
