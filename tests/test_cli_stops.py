"""The command line a newcomer meets: checkpoints and resuming, a stopped run that keeps its model, short
language-model runs, text files, and help that says each default once."""
import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

import nnkit
from nnkit.tools.cli import _parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_checkpoint_then_resume_trains_to_the_total(capsys, tmp_path):
    ckpt, saved = tmp_path / "ck.npz", tmp_path / "m.npz"
    code, _, err = run(capsys, "train", "--data", "xor", "--hidden", "4", "--epochs", "2", "--checkpoint", str(ckpt),
                       "-q")
    assert code == 0, err
    assert nnkit.load(ckpt).epoch == 2
    code, _, err = run(capsys, "train", "--data", "xor", "--hidden", "4", "--epochs", "3", "--checkpoint", str(ckpt),
                       "--resume", "--save", str(saved), "-q")
    assert code == 0, err
    assert nnkit.load(ckpt).epoch == 3 and nnkit.load(saved).epoch == 3  # one more epoch, not three


def test_resume_needs_a_checkpoint(capsys):
    code, _, err = run(capsys, "train", "--data", "xor", "--resume")
    assert code == 2 and "--resume continues from a checkpoint: give --checkpoint" in err


def test_a_text_file_without_a_task_suggests_the_language_model(capsys, tmp_path):
    text = tmp_path / "plays.txt"
    text.write_text("HAMLET, PRINCE OF DENMARK\nTo be, or not to be, that is the question.\n" * 50)
    code, _, err = run(capsys, "train", "--data", str(text))
    assert code == 2 and "is a text file" in err and "--task lm" in err


def test_a_short_language_model_run_cuts_its_warm_up_and_says_so(capsys, tmp_path):
    text = tmp_path / "plays.txt"
    text.write_text("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 40)
    code, out, err = run(capsys, "train", "--data", str(text), "--task", "lm", "--epochs", "4", "--steps-per-epoch",
                         "25", "--block-size", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                         "--batch-size", "4")
    assert code == 0, err
    assert "warm-up: 10 steps, a tenth of this 100-step run" in out
    code, _, err = run(capsys, "train", "--data", str(text), "--task", "lm", "--epochs", "1", "--steps-per-epoch",
                       "5", "--warmup", "5")
    assert code == 2 and "--warmup must be in [0, 5)" in err  # a warm-up the user gives is not cut


def test_help_says_each_default_once():
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            own = (action.help or "").lower()
            added = (formatter._get_help_string(action) or "").lower()[len(own):]
            assert not ("default" in own and "default" in added), (name, action.dest, added)  # said once
        assert "(default: None)" not in sub.format_help(), name
    train_help = subparsers.choices["train"].format_help()
    for what in ("MLP", "CNN", "recurrent", "GPT"):
        assert what in train_help


def _start(tmp_path, *extra):
    """``nnkit train`` in a subprocess, long enough to be stopped, returned once its first epoch is done."""
    ckpt = tmp_path / "ck.npz"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "nnkit", "train", "--data", "xor", "--hidden", "8", "--epochs",
                             "100000", "--checkpoint", str(ckpt), "-q", *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # written after each epoch: training is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_saves_its_model_and_exits_with_the_signals_status(tmp_path, sig, status):
    saved = tmp_path / "m.npz"
    proc = _start(tmp_path, "--save", str(saved))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    model = nnkit.load(saved)
    assert model.epoch >= 1 and "saved the model as of its last finished step" in err
    assert nnkit.load(tmp_path / "ck.npz").epoch >= 1


def test_a_stopped_run_without_save_says_how_to_keep_it(tmp_path):
    proc = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "--save MODEL.npz keeps the model" in err
