"""Weight-sync building blocks: WireState pickling and SyncGroup's in-place / bucketed broadcast."""

import pickle
import threading

import torch

from srum_ray.runtime import sync
from srum_ray.runtime.sync import SyncGroup, WireState, _plan, free_port, state_checksum


def sample_state():
    g = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(64, 32, generator=g),  # 8 KiB
        "bf16": torch.randn(300, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "t": torch.randn(8, 6, generator=g).t(),  # not contiguous
        "small.a": torch.randn(10, generator=g),
        "small.b": torch.arange(7, dtype=torch.float32),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def test_wire_state_pickles_tensor_bytes_out_of_band_and_rebuilds_them():
    state = sample_state()
    buffers = []
    data = pickle.dumps(WireState(state), protocol=5, buffer_callback=buffers.append)
    # every tensor's bytes travel as an out-of-band buffer (what Ray puts in the store as is)
    assert len(buffers) == len(state)
    assert len(data) < 2000
    back = pickle.loads(data, buffers=buffers)
    assert type(back) is dict and list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k], v)
    assert state_checksum(back) == state_checksum(state)


def test_plan_packs_small_tensors_and_sends_large_ones_alone(monkeypatch):
    monkeypatch.setattr(sync, "BUCKET_BYTES", 1024)
    state = sample_state()
    units = _plan(state)
    # groups by (device, dtype) in order of first name; "big" (8 KiB) alone, small float32 ones share
    assert units == [["bf16"], ["big"], ["empty", "scalar", "small.a", "small.b", "t"], ["flag"]]
    assert sorted(n for u in units for n in u) == sorted(state)


def test_sync_group_broadcasts_in_place_and_through_buckets(monkeypatch):
    monkeypatch.setattr(sync, "BUCKET_BYTES", 1024)
    state = sample_state()
    into = {k: torch.zeros_like(v) if k != "t" else torch.zeros(8, 6).t() for k, v in state.items()}
    big_storage = into["big"].data_ptr()
    port = free_port()
    sent = {}

    def send():
        group = SyncGroup("127.0.0.1", port, 0, 2, "gloo")
        sent["n"] = group.send(state)

    sender = threading.Thread(target=send)
    sender.start()
    receiver = SyncGroup("127.0.0.1", port, 1, 2, "gloo")
    got = receiver.receive(into)
    sender.join()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    assert sent["n"] == got == nbytes
    assert all(torch.equal(into[k], v) for k, v in state.items())
    assert into["big"].data_ptr() == big_storage  # written where it lives
    assert not into["t"].is_contiguous()  # a strided receiver is filled through a bucket
