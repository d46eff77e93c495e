"""Project objects <-> Flower records: an upload survives the trip, a bad one is refused unread."""

from __future__ import annotations

import numpy as np
import pytest

from fedpatchcore.core.banks import CategoryBanks, ClientUpload
from fedpatchcore.flower import records


def _upload() -> ClientUpload:
    rng = np.random.default_rng(0)
    return ClientUpload(
        "metal",
        {"plate": rng.normal(size=(5, 4)).astype(np.float32), "tray": rng.normal(size=(2, 4)).astype(np.float32)},
        {"plate": 3, "tray": 1},
        {"plate": np.array([0, 2, 4, 6, 8]), "tray": np.array([1, 0])},
        {"images.skipped": 1.0, "quality.sharpness": 0.25},
    )


def test_record_parts_round_trip_keeps_every_array_and_number():
    upload = _upload()
    arrays, scalars = upload.record_parts()
    assert set(arrays) == {"bank/plate", "bank/tray", "row_id/plate", "row_id/tray"}
    assert scalars == {"n_images/plate": 3, "n_images/tray": 1, "number/images.skipped": 1.0, "number/quality.sharpness": 0.25}
    back = ClientUpload.from_record_parts("metal", arrays, scalars)
    assert back.n_images == upload.n_images and back.numbers == upload.numbers
    for category in upload.banks:
        np.testing.assert_array_equal(back.banks[category], upload.banks[category])
        np.testing.assert_array_equal(back.row_ids[category], upload.row_ids[category])
    # The npz form is unchanged by the record form.
    assert set(upload.to_arrays()) == {*arrays, "n_images/plate", "n_images/tray", "number/images.skipped", "number/quality.sharpness"}
    with pytest.raises(ValueError, match="unexpected entry 'origin/plate'"):
        ClientUpload.from_record_parts("metal", {**arrays, "origin/plate": np.zeros(5)}, scalars)


def test_reply_and_instruction_round_trip_through_flower_records():
    upload = _upload()
    content = records.upload_reply(upload)
    assert records.reply_client_id(content) == "metal"
    back = records.read_upload(content, "metal")
    np.testing.assert_array_equal(back.banks["plate"], upload.banks["plate"])
    assert back.numbers == upload.numbers

    broadcast = CategoryBanks({"plate": upload.banks["plate"]}, {"plate": 3})
    round_number, parameters, bank = records.read_instruction(records.instruction(2, {"seed": 0, "coreset": {"ratio": 0.1}}, broadcast))
    assert round_number == 2 and parameters == {"seed": 0, "coreset": {"ratio": 0.1}}
    np.testing.assert_array_equal(bank.banks["plate"], upload.banks["plate"])
    assert records.read_instruction(records.instruction(1, {}, None))[2] is None


def test_oversized_or_undecodable_reply_is_refused_before_aggregation():
    content = records.upload_reply(_upload())
    size = records.reply_nbytes(content)
    assert records.read_upload(content, "metal", max_bytes=size).client_id == "metal"
    with pytest.raises(records.MalformedReply, match="exceeds federation.flower.max_upload_bytes"):
        records.read_upload(content, "metal", max_bytes=size - 1)
    garbage = records.upload_reply(_upload())
    garbage["upload"]["bank/plate"].data = b"not an npy file"
    with pytest.raises(records.MalformedReply, match="unreadable upload"):
        records.read_upload(garbage, "metal")
    wrong_kind = records.upload_reply(_upload())
    wrong_kind["upload"]["weights/plate"] = wrong_kind["upload"]["bank/plate"]
    with pytest.raises(records.MalformedReply, match="unexpected entry"):
        records.read_upload(wrong_kind, "metal")
