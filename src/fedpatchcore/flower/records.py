"""Project objects <-> Flower records: what travels in a round's messages.

Server -> client (``train`` message of round r)::

    "config"       ConfigRecord  {"round": r, "parameters": JSON of the blocks a client needs}
    "global_bank"  ArrayRecord   {"bank/<category>": rows}      (round r > 1: the broadcast bank)

Client -> server (the reply)::

    "client"   ConfigRecord  {"id": client id}
    "upload"   ArrayRecord   {"bank/<category>", "row_id/<category>"}   (ClientUpload.record_parts)
    "metrics"  MetricRecord  {"n_images/<category>", "number/<name>"}
    "experts"  ArrayRecord   the experts' statistics (round 1, with ``experts.enabled``)

With ``experts.enabled``, k-means rounds of the logical experts follow the coreset rounds
(``config`` then holds ``"expert_round": e`` and the ``experts`` record the server's broadcast:
centroids); the reply's ``experts`` record holds the site's Lloyd and histogram sums.

Arrays travel as NumPy ``.npy`` bytes (Flower's ``Array``); nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedpatchcore.core.banks import CategoryBanks, ClientUpload, pack, unpack

CONFIG = "config"
GLOBAL_BANK = "global_bank"
CLIENT = "client"
UPLOAD = "upload"
METRICS = "metrics"
EXPERTS = "experts"
EXPERT_ROUND = "expert_round"
# The message type of a round's instruction (Flower calls the ClientApp's @app.train()).
TRAIN = "train"


class MalformedReply(ValueError):
    """A client's reply that cannot be read as an upload (rejected before aggregation)."""


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the serialized arrays (what the record carries, before any transport framing)."""
    return int(sum(len(array.data) for array in record.values()))


def message_nbytes(message: Message) -> int:
    """Serialized size of a message and every object in it: what Flower pushes to the SuperLink."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return int(sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values()))


# --------------------------------------------------------------------------- server -> client


def instruction(round_number: int, parameters: Mapping[str, Any], broadcast: CategoryBanks | None) -> RecordDict:
    """The content of round ``round_number``'s message: run configuration (+ the global bank)."""
    content = RecordDict(
        {CONFIG: ConfigRecord({"round": int(round_number), "parameters": json.dumps(parameters, sort_keys=True)})}
    )
    if broadcast is not None:
        content[GLOBAL_BANK] = arrays_to_record(pack(bank=broadcast.banks))
    return content


def read_instruction(content: RecordDict) -> tuple[int, dict[str, Any], CategoryBanks | None]:
    """(round number, parameter blocks, broadcast bank or None) of an instruction."""
    config = content.config_records[CONFIG]
    broadcast = None
    if GLOBAL_BANK in content.array_records:
        banks = unpack(record_to_arrays(content.array_records[GLOBAL_BANK]), ("bank",), "the broadcast bank")
        broadcast = CategoryBanks({c: np.asarray(b, dtype=np.float32) for c, b in banks["bank"].items()}, {})
    return int(config["round"]), json.loads(str(config["parameters"])), broadcast


def expert_instruction(expert_round: int, parameters: Mapping[str, Any], broadcast: Mapping[str, np.ndarray]) -> RecordDict:
    """The content of the experts' k-means round ``expert_round``: run configuration and centroids."""
    return RecordDict(
        {
            CONFIG: ConfigRecord(
                {"round": 0, EXPERT_ROUND: int(expert_round), "parameters": json.dumps(parameters, sort_keys=True)}
            ),
            EXPERTS: arrays_to_record(broadcast),
        }
    )


def read_expert_instruction(content: RecordDict) -> tuple[int, dict[str, Any], dict[str, np.ndarray]] | None:
    """(k-means round, parameter blocks, broadcast) of an experts' instruction; None for a coreset round."""
    config = content.config_records[CONFIG]
    if EXPERT_ROUND not in config:
        return None
    return int(config[EXPERT_ROUND]), json.loads(str(config["parameters"])), record_to_arrays(content.array_records[EXPERTS])


# --------------------------------------------------------------------------- client -> server


def upload_reply(upload: ClientUpload, expert_statistics: Mapping[str, np.ndarray] | None = None) -> RecordDict:
    arrays, scalars = upload.record_parts()
    content = RecordDict(
        {
            CLIENT: ConfigRecord({"id": str(upload.client_id)}),
            UPLOAD: arrays_to_record(arrays),
            METRICS: MetricRecord(scalars),
        }
    )
    if expert_statistics is not None:
        content[EXPERTS] = arrays_to_record(expert_statistics)
    return content


def expert_reply(client_id: str, arrays: Mapping[str, np.ndarray]) -> RecordDict:
    """A site's reply to a k-means round of the experts."""
    return RecordDict({CLIENT: ConfigRecord({"id": str(client_id)}), EXPERTS: arrays_to_record(arrays)})


def read_experts(content: RecordDict, max_bytes: int | None = None) -> dict[str, np.ndarray] | None:
    """The ``experts`` arrays of a reply (None when it has none); :class:`MalformedReply` if oversized
    or undecodable."""
    if EXPERTS not in content.array_records:
        return None
    size = record_nbytes(content.array_records[EXPERTS])
    if max_bytes is not None and size > max_bytes:
        raise MalformedReply(f"experts' statistics of {size} bytes exceed federation.flower.max_upload_bytes={max_bytes}")
    try:
        return record_to_arrays(content.array_records[EXPERTS])
    except (ValueError, TypeError, EOFError, OSError) as exc:
        raise MalformedReply(f"unreadable experts' statistics: {type(exc).__name__}: {exc}") from exc


def reply_client_id(content: RecordDict) -> str:
    try:
        return str(content.config_records[CLIENT]["id"])
    except KeyError as exc:
        raise MalformedReply("the reply does not say which client sent it") from exc


def reply_nbytes(content: RecordDict) -> int:
    """Bytes of the reply's arrays, known before any of them is decoded."""
    return sum(record_nbytes(record) for record in content.array_records.values())


def read_upload(content: RecordDict, client_id: str, max_bytes: int | None = None) -> ClientUpload:
    """The client's upload; :class:`MalformedReply` if it is oversized or cannot be decoded.

    The size bound is checked on the serialized arrays, before decoding any of them.
    """
    size = reply_nbytes(content)
    if max_bytes is not None and size > max_bytes:
        raise MalformedReply(f"upload of {size} bytes exceeds federation.flower.max_upload_bytes={max_bytes}")
    try:
        arrays = record_to_arrays(content.array_records[UPLOAD])
        scalars = dict(content.metric_records[METRICS])
        return ClientUpload.from_record_parts(client_id, arrays, scalars)
    except (KeyError, ValueError, TypeError, EOFError, OSError) as exc:
        raise MalformedReply(f"unreadable upload: {type(exc).__name__}: {exc}") from exc
