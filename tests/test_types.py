"""The rollout batch keeps records and tensors aligned through select/split/concat."""

import pytest
import torch

from srum_ray.types import Box, RolloutBatch, SampleRecord


def make(n, offset=0):
    recs = [SampleRecord(id=f"s{offset + i}", round=0, prompt=f"p{i}", seed=i, weights_version=0) for i in range(n)]
    lat = torch.arange(n, dtype=torch.float32).add(offset).view(n, 1, 1, 1).expand(n, 2, 2, 2).clone()
    cond = {"prompt_embeds": lat[:, :1, 0, :].clone()}
    return RolloutBatch(records=recs, latents=lat, cond=cond, weights=torch.ones(n, 1, 2, 2))


def test_split_concat_roundtrip():
    b = make(5)
    parts = b.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    back = RolloutBatch.concat(parts)
    assert [r.id for r in back.records] == [r.id for r in b.records]
    assert torch.equal(back.latents, b.latents)
    assert torch.equal(back.cond["prompt_embeds"], b.cond["prompt_embeds"])


def test_select_keeps_rows_aligned():
    b = make(4)
    s = b.select([3, 1])
    assert [r.id for r in s.records] == ["s3", "s1"]
    assert s.latents[:, 0, 0, 0].tolist() == [3.0, 1.0]
    assert s.cond["prompt_embeds"][:, 0, 0].tolist() == [3.0, 1.0]


def test_mismatched_rows_rejected():
    b = make(3)
    with pytest.raises(ValueError, match="latents has 2 rows for 3 records"):
        RolloutBatch(records=b.records, latents=b.latents[:2])
    with pytest.raises(ValueError, match="different cond keys"):
        RolloutBatch.concat([make(1), RolloutBatch(records=make(1).records)])
    no_latents = make(1)
    no_latents.latents = None
    with pytest.raises(ValueError, match="only some"):
        RolloutBatch.concat([make(1), no_latents])
    with pytest.raises(ValueError):
        b.split(0)


def test_record_json_roundtrip_and_box():
    rec = SampleRecord(id="x", round=1, prompt="p", seed=2, weights_version=1, boxes=[[0, 0, 4, 4]])
    assert SampleRecord.from_json(rec.to_json()) == rec
    assert Box.from_list([5.2, 6, 1, 2.6]) == Box(1, 3, 5, 6)
    assert Box(0, 0, 4, 5).area == 20 and Box(3, 3, 1, 1).area == 0
    assert Box(-2, 1, 70, 9).clipped(64, 8) == Box(0, 1, 64, 8)
