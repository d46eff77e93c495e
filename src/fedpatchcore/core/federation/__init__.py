"""One client and one server, for every transport (Kedro lanes in one process, Flower apps).

``client.py``: what one factory does with its own images: extract patch features, choose a
local coreset, build the upload of a round. ``server.py``: one round: validate uploads,
weigh clients, select rows per category with the configured strategy, and return the global
bank with the client and local row of every row, plus a JSON-ready round report.

Plain Python on arrays and dicts: no Kedro, no Flower.
"""
