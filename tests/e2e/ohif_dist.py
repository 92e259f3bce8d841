"""The OHIF viewer's built app, a test peer: where it lives, and how to fetch it.

``python3 tests/e2e/ohif_dist.py`` downloads the npm package ``@ohif/app`` (its ``dist``
directory is the static single-page app a site deploys), checks it against the
registry's ``sha512`` integrity, unpacks it into a cache directory and prints the
``dist`` path. It does nothing but print when that version is already unpacked and
was verified. Standard library only: ``.ci/run`` runs it with the system Python
before the virtual environment exists.

The test reads the directory from ``RADHUB_OHIF_DIST``, by default
``${XDG_CACHE_HOME:-~/.cache}/radhub/ohif-app-<version>/package/dist``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

VERSION = "3.13.2"
TARBALL_URL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
# the registry's ``dist.integrity`` for that version (Subresource Integrity form)
INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKx"
    "Ffpq+jd5xXZB9E8EA=="
)
STAMP = "verified"  # beside package/: holds INTEGRITY once unpacked from a checked tarball


def cache_root() -> Path:
    """Where this version is unpacked (``package/`` inside, as npm packs it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "radhub" / f"ohif-app-{VERSION}"


def dist_dir() -> Path:
    """The app's directory: ``RADHUB_OHIF_DIST``, or the one the fetch unpacks."""
    given = os.environ.get("RADHUB_OHIF_DIST")
    return Path(given) if given else cache_root() / "package" / "dist"


def is_unpacked(root: Path) -> bool:
    stamp = root / STAMP
    ready = (root / "package" / "dist" / "index.html").is_file()
    return ready and stamp.is_file() and stamp.read_text().strip() == INTEGRITY


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def download(url: str, target: Path, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as answer, target.open("wb") as out:
                shutil.copyfileobj(answer, out, 1 << 20)
            return
        except OSError as exc:
            if attempt == attempts:
                raise SystemExit(f"cannot download {url}: {exc}") from exc
            time.sleep(2 * attempt)


def unpack(tarball: Path, into: Path) -> None:
    """Extract regular files and directories only, none outside ``into``."""
    with tarfile.open(tarball, "r:gz") as archive:
        members = archive.getmembers()
        for member in members:
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise SystemExit(f"refusing {member.name!r} in {tarball}")
        # the "data" filter (Python 3.11.4+) checks the same again, and keeps later
        # Pythons from warning about an unfiltered extraction
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(into, members, **safe)  # type: ignore[arg-type]


def fetch(root: Path) -> Path:
    """Make sure ``root`` holds the verified package; its ``dist`` directory."""
    if not is_unpacked(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent) as work:
            tarball = Path(work) / "app.tgz"
            download(TARBALL_URL, tarball)
            got = integrity_of(tarball)
            if got != INTEGRITY:
                raise SystemExit(f"{TARBALL_URL}: integrity {got}, expected {INTEGRITY}")
            staged = Path(work) / "unpacked"
            unpack(tarball, staged)
            (staged / STAMP).write_text(INTEGRITY + "\n")
            shutil.rmtree(root, ignore_errors=True)
            staged.rename(root)
    return root / "package" / "dist"


if __name__ == "__main__":
    print(fetch(cache_root()))
    sys.exit(0)
