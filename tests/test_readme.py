"""The README names only what exists: every `make` target, every `python -m <stage> <command>` and
every linked file; and it stays a page a newcomer reads (under 250 lines)."""
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# code spans and fenced blocks: where commands are written
CODE = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", README, re.S) + re.findall(r"`([^`\n]+)`", README))


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_readme_is_short():
    assert len(README.splitlines()) < 250


def test_every_make_target_it_names_exists():
    named = set(re.findall(r"\bmake ((?:[a-z][a-z0-9-]* ?)+)", CODE))
    targets = {t for words in named for t in words.split() if not re.fullmatch(r"[A-Z_]+=.*", t)}
    # the make targets table lists them in backticks too
    targets |= set(re.findall(r"`([a-z][a-z0-9-]*)`", README.split("## Make targets", 1)[1].split("\n## ", 1)[0]))
    assert targets, "the README names no make target"
    assert not targets - make_targets(), sorted(targets - make_targets())


def test_every_stage_command_it_names_exists():
    commands = set(re.findall(r"python -m (training|build|server|clients) ([a-z][a-z-]*)", CODE))
    assert commands
    for stage, command in sorted(commands):
        assert command in importlib.import_module(f"{stage}.__main__").COMMANDS, f"python -m {stage} {command}"
    modules = set(re.findall(r"python -m ((?:training|build|server|clients)\.[a-z_.]+)", CODE))
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_every_linked_file_exists():
    links = re.findall(r"\]\(((?!https?:)[^)#]+)", README)
    assert links
    assert not [link for link in links if not (ROOT / link).exists()]
