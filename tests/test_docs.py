"""The documentation site (docs/, built by mkdocs in CI with --strict) against the CLI it documents: every verb's
options are listed on docs/commands.md, and nothing listed there is missing from the CLI; README's commands exist."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer

from quickft.cli import app
from tests.conftest import ROOT

COMMANDS = typer.main.get_command(app).commands


def documented_options() -> dict[str, set[str]]:
    """Each `### \\`quickft VERB\\`` section of docs/commands.md: the flags its bullet lines name."""
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    sections = re.split(r"^### `quickft (\w+)`$", text, flags=re.M)
    return {
        verb: {
            flag for line in body.splitlines() if line.startswith("- ") for flag in re.findall(r"`(--[\w-]+)`", line)
        }
        for verb, body in zip(sections[1::2], sections[2::2], strict=True)
    }


def test_every_verb_and_option_is_on_the_commands_page_and_nothing_else():
    documented = documented_options()
    assert set(documented) == set(COMMANDS), "a verb added or removed without docs/commands.md"
    for verb, command in COMMANDS.items():
        options = {o for p in command.params if p.param_type_name == "option" for o in p.opts}
        assert documented[verb] == options, verb


def test_every_verb_in_the_readme_exists_and_its_help_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    verbs = set(re.findall(r"^\| `quickft (\w+)", readme, flags=re.M))
    assert verbs == set(COMMANDS), "README's commands table and the CLI disagree"
    for verb in sorted(verbs):
        done = subprocess.run(
            [sys.executable, "-m", "quickft", verb, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert done.returncode == 0 and "Usage:" in done.stdout, verb


def test_the_readme_stays_a_front_door():
    """At most 250 lines; the reference lives on the docs site, and every page README links to exists."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in re.findall(r"\]\((docs/[\w./-]+\.md)", readme):
        assert (ROOT / page).is_file(), page


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import mkdocs, material"], capture_output=True).returncode != 0,
    reason="mkdocs-material is not installed (the dev extra installs it)",
)
def test_the_docs_site_builds_strictly(tmp_path):
    """mkdocs build --strict: a broken link, a missing page or a page left out of the navigation fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "models" / "index.html").is_file()
