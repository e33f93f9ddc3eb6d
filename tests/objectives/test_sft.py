"""objective sft: the loss is the sum of the masked token losses over the supervised tokens of the global batch,
and a conversation packed with others gets the same per-token losses as the conversation run alone."""

import numpy as np
import pytest
import torch

from omni_mega.objectives.base import packed_seq_params
from omni_mega.objectives.sft import SFTObjective, masked_sum
from omni_mega.training.step_io import reduce_metrics


def test_masked_sum_counts_only_supervised_tokens():
    per_token = torch.rand(1, 9, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 0, 0]], dtype=torch.float32)
    total, count, values = masked_sum(mask, per_token)
    assert int(count) == 3 and total.item() == pytest.approx(float((per_token * mask).sum()))
    assert values["loss"].tolist() == pytest.approx([total.item(), 3.0])
    assert SFTObjective.per_token_loss


def test_global_mean_is_per_supervised_token_not_per_micro_batch():
    """Two micro-batches with 1 and 3 supervised tokens: the step's loss is their 4-token mean, not the mean of the
    two micro-batch means."""
    a, b = torch.tensor([[2.0, 0, 0]]), torch.tensor([[1.0, 1.0, 1.0]])
    ma, mb = torch.tensor([[1.0, 0, 0]]), torch.ones(1, 3)
    values = reduce_metrics([masked_sum(ma, a)[2], masked_sum(mb, b)[2]], ("loss",))
    assert values["loss"] == pytest.approx(5.0 / 4)  # (2 + 3) / 4, where the mean of means would be 1.5


@pytest.fixture(scope="module")
def model_and_pack(tmp_path_factory):
    from omni_mega.config import ConnectorConfig, LLMConfig, ModelConfig, ParallelConfig, ViTConfig
    from omni_mega.data.conversations.shards import ConvShardDataset
    from omni_mega.data.demo.conversations import build_demo_conversations
    from omni_mega.models.factory import build_model
    from omni_mega.runtime import init_distributed, shutdown
    from tests.data.test_conversations import _source
    from tests.distributed.launch import free_port
    import os

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_distributed(ParallelConfig(), seed=5)
    cfg = ModelConfig(llm=LLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_position_embeddings=256),
                      vit=ViTConfig(num_layers=1, hidden_size=32, num_attention_heads=2),
                      connector=ConnectorConfig(kind="mlp"))
    model = build_model(cfg, ParallelConfig(), 384, 256, torch.float32).eval()
    ds = ConvShardDataset(build_demo_conversations(tmp_path_factory.mktemp("c"), "sft")["train"])
    src = _source(ds)
    pack = next(p for p in src.step_packs(8) if len(p) >= 2)
    yield model, src, pack
    shutdown()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _per_token(model, mb):
    with torch.no_grad():
        return model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"].masked_fill(mb["loss_mask"] == 0, 0),
                     pixel_values=mb.get("pixel_values"), grid_thw=mb.get("grid_thw"),
                     packed_seq_params=packed_seq_params(mb))


def test_packed_conversation_equals_the_conversation_alone(model_and_pack):
    model, src, pack = model_and_pack
    together = src.materialize_pack(pack)
    loss = _per_token(model, together)
    cu = together["cu_seqlens"].tolist()
    for k, s in enumerate(pack):
        alone = src.materialize_pack([s])
        a, b = cu[k], cu[k + 1]
        mine = _per_token(model, alone)[0, :b - a]
        mask = alone["loss_mask"][0, :b - a] > 0
        assert mask.any() and torch.equal(alone["tokens"][0, :b - a], together["tokens"][0, a:b])
        err = (mine[mask] - loss[0, a:b][mask]).abs().max().item()
        assert err <= 1e-5, (k, err)
    assert np.isclose(float(together["loss_mask"].sum()), sum(float(src.materialize_pack([s])["loss_mask"].sum())
                                                               for s in pack))
