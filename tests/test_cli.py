"""The command line: one-line errors before any model loads; run, resume, show."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from srum_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import sys; from srum_ray.cli import main; rc = main(sys.argv[1:]); "
    "heavy = [m for m in ('diffusers', 'transformers', 'segment_anything', 'srum_ray.loop') if m in sys.modules]; "
    "print('HEAVY', heavy); sys.exit(rc)"
)


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--config", "configs/tiny.yaml", "train.lrr=1"], "unknown key train.lrr"),
        (["run", "--config", "configs/tiny.yaml", "reward.convention=x"], "allowed: paper, public_code"),
        (["run", "--config", "configs/nope.yaml"], "config file not found: configs/nope.yaml"),
        (["run", "--config", "configs/tiny.yaml", "data.prompts=[/no/such/prompts.txt]"],
         "data.prompts: prompt file not found: /no/such/prompts.txt"),
        (["run", "--config", "configs/tiny.yaml", "model.checkpoint=/no/such/ckpt"],
         "model.checkpoint: path not found: /no/such/ckpt"),
        (["run", "--config", "configs/tiny.yaml", "grounder.sam.checkpoint=configs"],
         "grounder.sam.checkpoint: expected a file, got a directory: configs"),
        (["run", "--config", "configs/tiny.yaml", "grounder.sam.model_type=vit_h"],
         "grounder.sam.checkpoint is required"),
        (["run", "--config", "configs/tiny.yaml", "grounder.kind=sam_hf"],
         "grounder.sam.checkpoint is required for grounder.kind=sam_hf"),
        (["run", "--resume", "/no/such/run"], "run directory not found: /no/such/run"),
        (["run", "--config", "configs/tiny.yaml", "run.dtype=float16"], "run.dtype=float16 needs train.engine=deepspeed"),
        (["demo", "--arms", "srum,srumm"], "--arms: unknown arm 'srumm'; allowed: srum, sft"),
        (["show", "configs/tiny.yaml"], "configs/tiny.yaml is a file, not a run directory"),
        (["check", "--config", "configs/tiny.yaml", "train.batch_size=99"], "train.batch_size = 99"),
        (["check", "--config", "configs/tiny.yaml", "model.backend=nope"], "model.backend = 'nope' is not registered"),
        (["check", "--config", "configs/tiny.yaml", "model.understanding.extra_objects=count"],
         "model.understanding.extra_objects = count is read by the shapes backend's judge only"),
        (["check", "--config", "configs/tiny.yaml", "reward.uncovered=global", "reward.ablation=no_global"],
         "reward.uncovered = global paints the judge's global score"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(args, fragment, tmp_path):
    p = cli(*args, "run.output_dir=" + str(tmp_path)) if args[0] in {"run", "check"} and "--resume" not in args else cli(*args)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("srum-ray: error: ") and fragment in lines[0]
    assert "HEAVY []" in p.stdout
    assert not list(tmp_path.iterdir()), "no run directory for a run that never started"


def test_incomplete_checkpoint_dir(tmp_path):
    (tmp_path / "ck").mkdir()
    p = cli("check", "--config", "configs/tiny.yaml", f"model.checkpoint={tmp_path / 'ck'}")
    assert p.returncode == 2 and "incomplete tiny checkpoint" in p.stderr and "generator/" in p.stderr


def test_unloadable_sam_checkpoint_fails_before_a_run_directory(tmp_path):
    bad = tmp_path / "sam.pth"
    bad.write_text("not a checkpoint")
    out = tmp_path / "runs"
    p = subprocess.run(
        [sys.executable, "-m", "srum_ray.cli", "run", "--config", "configs/tiny.yaml",
         f"grounder.sam.checkpoint={bad}", f"run.output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if l.startswith("srum-ray: error:")]
    assert len(err) == 1 and "is not a SAM checkpoint" in err[0] and str(bad) in err[0]
    assert not out.exists()


def test_check_run_show_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's relative prompt path
    out = tmp_path / "runs"
    common = [f"run.output_dir={out}", "run.progress=false", "run.rounds=1"]
    assert main(["check", "--config", "configs/tiny.yaml", *common]) == 0
    assert "config ok: 20 prompts" in capsys.readouterr().out
    assert main(["run", "--config", "configs/tiny.yaml", *common]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run_dir / "rounds/0000/samples.jsonl").is_file()
    # resume may only change the number of rounds (and progress/device)
    assert main(["run", "--resume", str(run_dir), "train.lr=1"]) == 2
    assert "cannot change train.lr when resuming" in capsys.readouterr().err
    assert main(["run", "--resume", str(run_dir), "run.rounds=2"]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["last_completed_round"] == 1 and state["weights_version"] == 2
    assert main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "2 rounds complete" in shown and "r0001-00000-0" in shown


def test_plugin_backend_is_imported_and_checked(tmp_path):
    """A backend registered by a plugin module passes the check; an unknown one is named."""
    (tmp_path / "my_backend.py").write_text(
        "from srum_ray.models.registry import BACKENDS, register_backend\n"
        "@register_backend('mine')\n"
        "def build(model_cfg, gen_cfg, device, dtype, parts=('generator', 'understanding')):\n"
        "    return BACKENDS.get('tiny')(model_cfg, gen_cfg, device, dtype, parts=parts)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    ok = subprocess.run([sys.executable, "-m", "srum_ray.cli", "check", "--config", "configs/tiny.yaml",
                         "model.plugins=[my_backend]", "model.backend=mine"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0 and "backend mine" in ok.stdout, ok.stderr[-1000:]
    bad = subprocess.run([sys.executable, "-m", "srum_ray.cli", "check", "--config", "configs/tiny.yaml",
                          "model.backend=mine"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "model.backend = 'mine' is not registered (allowed: " in bad.stderr


def test_device_and_output_dir_are_checked(tmp_path):
    import torch

    if not torch.cuda.is_available():
        p = cli("check", "--config", "configs/tiny.yaml", "run.device=cuda")
        assert p.returncode == 2 and "run.device=cuda but torch sees no CUDA device" in p.stderr
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for out in (a_file, a_file / "below"):
        p = cli("check", "--config", "configs/tiny.yaml", f"run.output_dir={out}")
        assert p.returncode == 2 and f"run.output_dir: {a_file} is a file, not a directory" in p.stderr
    p = cli("demo", "--val-prompts", "-1")
    assert p.returncode == 2 and "--val-prompts: must be at least 1, got -1" in p.stderr


def test_resume_mistakes_stop_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["run", "--config", "configs/tiny.yaml", f"run.output_dir={tmp_path}", "run.progress=false", "run.rounds=2"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    config_before = (run_dir / "config.yaml").read_text()

    import srum_ray.loop

    def no_models(cfg):
        raise AssertionError("models were built")

    monkeypatch.setattr(srum_ray.loop, "build_runtime", no_models)

    def fails(*args):
        assert main(["run", "--resume", str(run_dir), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("srum-ray: error: ")
        return err[0]

    assert "run.rounds=1 is below the 2 rounds already complete" in fails("run.rounds=1")
    assert "unknown key train.lrr" in fails("train.lrr=1")
    assert "--config and --resume exclude each other" in main_with_config(run_dir, capsys)
    # nothing to do: said before any model loads
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert "nothing to do: 2 rounds of 2 already complete" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == config_before  # no failed resume rewrote it
    (run_dir / "checkpoints/0001/trainable.safetensors").unlink()
    msg = fails("run.rounds=3")
    assert "checkpoint of round 1" in msg and "incomplete: no trainable.safetensors" in msg
    assert (run_dir / "config.yaml").read_text() == config_before
    # a directory holding runs (a demo directory) names them
    assert main(["show", str(tmp_path)]) == 2
    assert f"the runs inside it: {run_dir.name}" in capsys.readouterr().err


def main_with_config(run_dir, capsys) -> str:
    assert main(["run", "--config", "configs/tiny.yaml", "--resume", str(run_dir)]) == 2
    return capsys.readouterr().err


def test_a_closed_pipe_ends_show_quietly():
    code = (
        "import sys, srum_ray.cli as c\n"
        "def show(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
        "c.cmd_show = show  # build_parser reads the name when main builds it\n"
        "sys.exit(c.main(['show', 'anything']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
