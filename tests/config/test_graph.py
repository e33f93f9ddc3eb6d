"""Stage graphs (config.graph): jobs, job: references, the run order and waves, per-job model parts, malformed
graphs, and the μOmni example's --dry-run (pure Python: no training)."""

from pathlib import Path

import pytest

from omni_mega.config import ConfigError, load_config
from omni_mega.config import graph

ROOT = Path(__file__).resolve().parents[2]
MUOMNI = ROOT / "examples" / "configs" / "muomni_5stage.yaml"


def test_muomni_graph_order_and_jobs():
    cfg = load_config(str(MUOMNI))
    graph.check(cfg)
    assert list(graph.jobs(cfg)) == ["A", "B", "C", "D", "E"]
    assert [s.name for s in graph.jobs(cfg)["D"]] == ["codec", "talker"]
    deps = graph.dependencies(cfg)
    assert deps["E"] == ["A", "C", "B", "D"] and all(not deps[j] for j in "ABCD")
    assert graph.topo_order(cfg)[-1] == "E"
    assert graph.find_job(cfg, "talker") == "D" and graph.find_job(cfg, "B") == "B"
    text = graph.format_graph(cfg)
    assert "wave 1: A, B, C, D (independent: run in parallel)" in text and "wave 2: E" in text


def test_job_config_prunes_parts_and_resolves_references(tmp_path):
    cfg = load_config(str(MUOMNI))
    a = graph.job_config(cfg, "A", tmp_path)
    m = a.model
    assert (m.vit, m.connector, m.audio, m.codec, m.talker, m.classifier) == (None,) * 6  # a plain GPT
    b = graph.job_config(cfg, "B", tmp_path)
    assert b.model.audio is not None and b.model.vit is None and b.model.codec is None
    assert [s.name for s in b.stages] == ["asr"] and b.data.data_dir == str(tmp_path / "data")
    d = graph.job_config(cfg, "D", tmp_path)
    assert d.model.codec is not None and d.model.talker is not None and d.model.audio is None
    e = graph.job_config(cfg, "E", tmp_path)
    assert e.stages[0].init_from["audio"] == str(tmp_path / "B") and e.stages[0].init_from["llm"] == str(tmp_path / "A")
    assert all(getattr(e.model, p) is not None for p in ("vit", "audio", "codec", "talker", "classifier"))
    assert cfg.stages[-1].init_from["audio"] == "job:B"  # the graph itself is not changed


@pytest.mark.parametrize("stages, message", [
    ("[{name: a, job: A}, {name: b}]", "every stage names its job"),
    ("[{name: a, job: A}, {name: b, job: B, init_from: {llm: 'job:C'}}]", "job:C is not a job of this config"),
    ("[{name: a, job: A, init_from: 'job:A'}]", "is the stage's own job"),
    ("[{name: a, job: A, init_from: 'job:B'}, {name: b, job: B, init_from: 'job:A'}]", "in a cycle"),
    ("[{name: a, job: A}, {name: b, job: B}, {name: c, job: A}]", "must be next to each other"),
    ("[{name: a, init_from: 'job:B'}]", "job: sources need a stage graph"),
])
def test_malformed_graphs(stages, message):
    cfg = load_config(None, [f"stages={stages}"])
    with pytest.raises(ConfigError, match=message):
        graph.check(cfg)


def test_dry_run_prints_the_graph_and_every_job(capsys):
    from omni_mega.cli import main

    assert main(["train", str(MUOMNI), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "wave 1: A, B, C, D" in out and "==== job E (run dir runs/muomni/E) ====" in out
    assert "stage asr (ctc)" in out and "trainable" in out and "audio 127,872" in out
    assert main(["train", str(MUOMNI), "--dry-run", "--stage", "nope"]) == 2
    assert "no job or stage of that name" in capsys.readouterr().err
    assert main(["train", str(MUOMNI), "--resume", "/x"]) == 2
    assert "add --stage JOB" in capsys.readouterr().err


def test_part_stage_rules():
    base = ["model.llm={num_layers: 1, hidden_size: 32, num_attention_heads: 4}"]
    with pytest.raises(ConfigError, match="objective: ctc trains model.audio, which the config does not have"):
        from omni_mega.config import validate

        validate(load_config(None, base + ["stages=[{name: s, objective: ctc, data: [{name: a, source: demo_audio}],"
                                           " trainable: [llm]}]"]))
    cfg = load_config(None, base + ["model.audio={num_layers: 1, hidden_size: 32, num_attention_heads: 4}",
                                    "parallel.pp=1", "stages=[{name: s, objective: ctc, data: [{name: t, source: "
                                    "demo_text}], trainable: [audio]}]"])
    with pytest.raises(ConfigError, match="objective ctc reads demo_audio or audio_shards datasets"):
        validate(cfg)
    cfg = load_config(None, base + ["stages=[{name: s, data: [{name: a, source: demo_audio}]}]"])
    with pytest.raises(ConfigError, match="audio datasets need an audio encoder"):
        validate(cfg)
