"""scripts/setup, the README's install command, where it cannot install system packages itself."""
from __future__ import annotations

import os
import shutil
import subprocess

from tests.conftest import ROOT


def test_without_apt_it_names_the_packages_in_one_line(tmp_path):
    """No apt-get on PATH and a Python without venv support: one line names what to install by other
    means (python3-venv among them), and the script fails rather than pretend."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", repo / "scripts" / "setup")
    bin_dir = tmp_path / "bin"  # the few commands the script needs, and no apt-get or sudo
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "false", "pgrep"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYTHON": "false"}
    r = subprocess.run(["bash", str(repo / "scripts" / "setup")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("scripts/setup:")]
    assert len(said) == 1 and said[0].startswith("scripts/setup: cannot run apt-get here"), r.stderr
    assert "python3-venv" in said[0] and "by other means" in said[0]
    assert not (repo / ".venv").exists()


def test_unknown_option_is_refused(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup"), "--no-such-option"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == \
        "scripts/setup: unknown option --no-such-option (known: --no-system-packages)"
