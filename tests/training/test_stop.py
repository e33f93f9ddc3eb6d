"""A stop request (the SLURM trap's SAVE_AND_EXIT file) makes the trainer checkpoint after the current step and
return; `--resume auto` then continues from that step with the same losses as an uninterrupted run."""

import threading

import torch

from omni_mega.config import load_config
from omni_mega.runtime import init_distributed
from omni_mega.training.stop import STOP_FILE
from omni_mega.training.trainer import Trainer

TINY = ["model.llm.num_layers=2", "model.llm.hidden_size=32", "model.llm.num_attention_heads=4",
        "model.llm.max_position_embeddings=64", "data.seq_length=16", "data.micro_batch_size=2",
        "data.global_batch_size=4", "optim.warmup_steps=0", "train.tensorboard=false",
        "stages=[{name: a, steps: 6}]"]


def test_stop_file_checkpoints_and_resume_continues(tmp_path):
    cfg = load_config("examples/configs/tiny_text.yaml", TINY)
    straight = Trainer(cfg, init_distributed(cfg.parallel, seed=1), tmp_path / "straight").train()

    run = tmp_path / "stopped"
    rt = init_distributed(cfg.parallel, seed=1)  # re-seeds: the same initial weights as the straight run
    t = Trainer(cfg, rt, run)
    step = t.train_step

    def step_then_request():  # the request arrives during step 2, as the batch script's trap would write it
        r = step()
        if t.state.step == 2:
            (run / STOP_FILE).touch()
        return r

    t.train_step = step_then_request
    first = t.train()
    assert len(first) == 2 and t.state.step == 2
    assert not (run / STOP_FILE).exists(), "the request must be cleared once honoured"
    assert (run / "ckpt" / "step_0000002").is_dir()

    torch.manual_seed(99)  # a different init: everything must come from the checkpoint
    rest = Trainer(cfg, rt, run, resume="auto").train()
    assert first + rest == straight


def test_signal_sets_the_request(tmp_path):
    import os
    import signal

    from omni_mega.training.stop import StopRequest

    if threading.current_thread() is not threading.main_thread():
        return
    req = StopRequest(tmp_path, torch.device("cpu"))
    assert not req.requested()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert req.requested()
    req.clear()
    assert not req.requested()
