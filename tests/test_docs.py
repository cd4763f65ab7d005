"""The README documents what the code does: every flag, the set-up contract, the Parquet schema."""
from __future__ import annotations

import re

from analysis.tables import EPOCHS_SCHEMA, TRIALS_SCHEMA
from study.cli import build_parser
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_flag_is_in_the_readme():
    flags = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    missing = sorted(f for f in flags if f"`{f}`" not in README)
    assert not missing, f"flags missing from README: {missing}"


def test_every_parquet_column_is_in_the_readme():
    for schema in (TRIALS_SCHEMA, EPOCHS_SCHEMA):
        missing = [n for n in schema.names if f"`{n}`" not in README]
        assert not missing, f"columns missing from README: {missing}"


def test_ci_runs_exactly_the_readme_commands():
    """The Set-up block is two commands (install everything, run the tests); .ci/run runs those two
    and nothing else, so CI checks what the README promises."""
    setup = README.split("## Set-up", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", setup, re.S)
    commands = [ln.strip() for ln in blocks[0].splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands == ["scripts/setup", ".venv/bin/python -m pytest"]
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.strip().startswith(("#", "set ", "cd "))]
    assert ci == commands
    assert "python -m study.lottery --num-samples 64" in blocks[1]


def test_ui_flags_and_system_packages_are_in_the_readme():
    import contextlib
    import io

    from study import ui
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        ui.main(["--help"])
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text.getvalue())) - {"--help"}
    assert flags == {"--optuna", "--port", "--host"}
    assert all(f"`{f}`" in README for f in flags)
    setup = (ROOT / "scripts" / "setup").read_text()
    packages = re.findall(r"\|\| echo ([a-z0-9.-]+)", setup)
    assert {"chromium", "chromium-driver", "dataset-fashion-mnist"} <= set(packages)
    assert f"`{' '.join(packages)}`" in README, packages
