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
        (["run", "--resume", "/no/such/run"], "run directory to resume not found"),
        (["check", "--config", "configs/tiny.yaml", "train.batch_size=99"], "train.batch_size = 99"),
        (["check", "--config", "configs/tiny.yaml", "model.backend=nope"], "model.backend = 'nope' is not registered"),
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
