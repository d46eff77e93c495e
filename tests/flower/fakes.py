"""A Flower Grid in memory: each node is a function from an instruction to a reply (or None).

Drives :func:`fedpatchcore.flower.rounds.serve` without the simulation engine or a SuperLink,
so fault handling is tested in milliseconds. A node returning None never replies (a dead or
hung SuperNode): the reply is simply missing when ``send_and_receive``'s timeout ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

Node = Callable[[Message, Context], "Message | None"]


class FakeGrid:
    def __init__(self, nodes: Mapping[int, Node], node_configs: Mapping[int, dict] | None = None) -> None:
        # Who "this process" is, as a ServerApp's process would know (messages are stamped with it).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self.nodes = dict(nodes)
        self.contexts = {
            node_id: Context(
                run_id=1, node_id=node_id, node_config=dict((node_configs or {}).get(node_id, {})), state=RecordDict(), run_config={}
            )
            for node_id in self.nodes
        }
        self.timeouts: list[float | None] = []
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            reply = self.nodes[node_id](message, self.contexts[node_id])
            if reply is not None:
                replies.append(reply)
        return replies


def app_node(client_app) -> Node:
    """A node running a real ClientApp."""
    return lambda message, context: client_app(message, context)
