"""Fetch the simulator model and the driving segments the project needs.

Puts ``models/tinyphysics.onnx`` (md5-verified) and ``data/00000.csv`` ...
into the repository root (or ``--root``), either by copying them from a local
mirror directory (``--mirror DIR`` or ``$TINYPHYSICS_MIRROR``, laid out as
``DIR/models/tinyphysics.onnx`` and ``DIR/data/*.csv``) or by downloading them
from their public sources.

Guarantees:

* idempotent -- a model whose md5 already matches, and a CSV that already
  exists with the size of its source, is left alone;
* atomic -- every file is written to a temporary file in its target directory,
  fsync'd and then renamed into place, so a failure (network error, md5
  mismatch, corrupt zip, missing mirror file, Ctrl-C) never leaves a
  half-written file under a final name.

Run it as ``python -m scripts.fetch_assets [--mirror DIR] [--root DIR]
[--skip-data] [--num-segs N]``.  Failures exit with status 1 and one line on
stderr naming the URL or path and what went wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent

MODEL_URL = "https://raw.githubusercontent.com/commaai/controls_challenge/master/models/tinyphysics.onnx"
MODEL_MD5 = "f508deb4c3e1a169da7b3610b6f287d4"
MODEL_RELPATH = Path("models") / "tinyphysics.onnx"

DATA_URL = "https://huggingface.co/datasets/commaai/commaSteeringControl/resolve/main/data/SYNTHETIC_V0.zip"
DATA_DIRNAME = "data"
# Written into data/ after a successful unpack so that a later run can tell,
# without downloading the archive again, that every wanted CSV is in place.
MANIFEST_NAME = ".fetch_manifest.json"

MIRROR_ENV = "TINYPHYSICS_MIRROR"

CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "tinyphysics-ppo-fetch-assets/0.1"


class FetchError(RuntimeError):
    """An asset could not be obtained; the message is one line naming the URL or path."""


# --------------------------------------------------------------------------- helpers


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _resolve(path: str | os.PathLike) -> Path:
    """Absolute path; relative paths are taken against the current working directory."""
    return Path(path).expanduser().resolve()


def _mirror_from_env() -> Path | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    return _resolve(value) if value else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``dest`` only if the block finishes without error.

    The data goes to a temporary file next to ``dest`` that is fsync'd and then
    ``os.replace``'d onto ``dest``.  On any exception (KeyboardInterrupt included)
    the temporary file is removed and ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _copy_stream(src: BinaryIO, dst: BinaryIO, hasher=None, progress: tqdm | None = None) -> int:
    n = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        dst.write(block)
        if hasher is not None:
            hasher.update(block)
        if progress is not None:
            progress.update(len(block))
        n += len(block)
    return n


def _download_to(url: str, dest: Path, expected_md5: str | None = None) -> None:
    """Download ``url`` atomically to ``dest`` with a progress bar, optionally md5-verified."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _atomic_file(dest) as out:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                hasher = hashlib.md5()
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"download {dest.name}", leave=False) as bar:
                    n = _copy_stream(response, out, hasher, bar)
            if total is not None and n != total:
                raise FetchError(f"download of {url} incomplete: got {n} of {total} bytes")
            if expected_md5 is not None and hasher.hexdigest() != expected_md5.lower():
                raise FetchError(f"md5 mismatch for {url}: got {hasher.hexdigest()}, "
                                 f"expected {expected_md5.lower()}")
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        raise FetchError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise FetchError(f"download of {url} failed: {e.reason}") from e
    except http.client.IncompleteRead as e:
        raise FetchError(f"download of {url} incomplete: connection closed after "
                         f"{len(e.partial)} bytes of the current chunk") from e
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(f"download of {url} failed: {type(e).__name__}: {e}") from e


def _copy_file_to(src: Path, dest: Path, expected_md5: str | None = None) -> None:
    """Copy ``src`` atomically to ``dest``, optionally verifying the md5 of the bytes copied."""
    hasher = hashlib.md5()
    try:
        with _atomic_file(dest) as out, open(src, "rb") as f:
            _copy_stream(f, out, hasher)
            if expected_md5 is not None and hasher.hexdigest() != expected_md5.lower():
                raise FetchError(f"md5 mismatch for {src}: got {hasher.hexdigest()}, "
                                 f"expected {expected_md5.lower()}")
    except FetchError:
        raise
    except OSError as e:
        raise FetchError(f"copy of {src} to {dest} failed: {e.strerror or e}") from e


def _take(names: list[str], num_segs: int | None, source: str) -> list[str]:
    if num_segs is None:
        return names
    if num_segs < 1:
        raise FetchError(f"num_segs must be >= 1, got {num_segs}")
    if num_segs > len(names):
        raise FetchError(f"{source} holds only {len(names)} CSV files, {num_segs} requested")
    return names[:num_segs]


# --------------------------------------------------------------------------- model


def fetch_model(root: str | os.PathLike = REPO_ROOT, mirror: str | os.PathLike | None = None,
                url: str = MODEL_URL, expected_md5: str = MODEL_MD5) -> Path:
    """Ensure ``<root>/models/tinyphysics.onnx`` exists and has md5 ``expected_md5``.

    Does nothing if the file is already there with the right md5.  Otherwise copies
    ``<mirror>/models/tinyphysics.onnx`` when ``mirror`` is given (a relative mirror
    is resolved against the current working directory), or downloads ``url``.
    The new file is md5-verified before it is moved into place, so a bad source
    leaves no file behind.  Returns the path of the model; raises ``FetchError``.
    """
    dest = _resolve(root) / MODEL_RELPATH
    expected_md5 = expected_md5.lower()
    if dest.is_file() and _md5_file(dest) == expected_md5:
        return dest
    if mirror is not None:
        src = _resolve(mirror) / MODEL_RELPATH
        if not src.is_file():
            raise FetchError(f"mirror has no model: {src} not found")
        _copy_file_to(src, dest, expected_md5)
    else:
        _download_to(url, dest, expected_md5)
    return dest


# --------------------------------------------------------------------------- data


def _csv_basename(member: zipfile.ZipInfo) -> str | None:
    """The flat file name a zip member unpacks to, or None if it is not a wanted CSV."""
    if member.is_dir():
        return None
    parts = PurePosixPath(member.filename.replace("\\", "/")).parts
    if not parts or "__MACOSX" in parts:
        return None
    name = parts[-1]
    if not name.lower().endswith(".csv") or name.startswith("."):
        return None
    return name


def _fetch_data_from_mirror(data_dir: Path, mirror: Path, num_segs: int | None) -> list[Path]:
    src_dir = mirror / DATA_DIRNAME
    if not src_dir.is_dir():
        raise FetchError(f"mirror has no data: {src_dir} is not a directory")
    names = sorted(p.name for p in src_dir.glob("*.csv") if p.is_file())
    if not names:
        raise FetchError(f"mirror has no data: no *.csv files in {src_dir}")
    names = _take(names, num_segs, str(src_dir))
    out = []
    for name in tqdm(names, desc="copy data", unit="file", leave=False):
        src, dest = src_dir / name, data_dir / name
        if not (dest.is_file() and dest.stat().st_size == src.stat().st_size):
            _copy_file_to(src, dest)
        out.append(dest)
    return out


def _manifest_says_complete(data_dir: Path, url: str, num_segs: int | None) -> list[Path] | None:
    """Paths of the wanted CSVs if a previous unpack of ``url`` left them all in place."""
    try:
        manifest = json.loads((data_dir / MANIFEST_NAME).read_text())
        if manifest.get("url") != url:
            return None
        sizes = {str(k): int(v) for k, v in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    names = sorted(sizes)
    if not names or (num_segs is not None and num_segs > len(names)):
        return None
    names = names if num_segs is None else names[:num_segs]
    paths = [data_dir / n for n in names]
    if all(p.is_file() and p.stat().st_size == sizes[p.name] for p in paths):
        return paths
    return None


def _unpack_csvs(zip_path: Path, url: str, data_dir: Path, num_segs: int | None) -> list[Path]:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                name = _csv_basename(info)
                if name is None:
                    continue
                if name in members and members[name].filename != info.filename:
                    raise FetchError(f"bad zip from {url}: {name} appears twice "
                                     f"({members[name].filename}, {info.filename})")
                members[name] = info
            names = sorted(members)
            if not names:
                raise FetchError(f"bad zip from {url}: it holds no *.csv files")
            all_sizes = {n: members[n].file_size for n in names}
            names = _take(names, num_segs, f"zip from {url}")
            out = []
            for name in tqdm(names, desc="unpack data", unit="file", leave=False):
                info, dest = members[name], data_dir / name
                if not (dest.is_file() and dest.stat().st_size == info.file_size):
                    with _atomic_file(dest) as f, zf.open(info) as src:
                        _copy_stream(src, f)
                out.append(dest)
    except FetchError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
        raise FetchError(f"bad zip from {url}: {e}") from e
    except OSError as e:
        raise FetchError(f"unpacking zip from {url} into {data_dir} failed: {e}") from e
    # Record what the archive holds so the next run can skip the download.
    with _atomic_file(data_dir / MANIFEST_NAME) as f:
        f.write(json.dumps({"url": url, "files": all_sizes}, indent=0, sort_keys=True).encode())
    return out


def fetch_data(root: str | os.PathLike = REPO_ROOT, mirror: str | os.PathLike | None = None,
               url: str = DATA_URL, num_segs: int | None = None) -> list[Path]:
    """Ensure the driving segments are in ``<root>/data/`` as flat ``NNNNN.csv`` files.

    With ``mirror``, copies the first ``num_segs`` (default: all) sorted
    ``<mirror>/data/*.csv`` files; a relative mirror is resolved against the current
    working directory.  Without it, downloads the zip at ``url`` to a temporary file
    in ``data/``, unpacks only its ``*.csv`` members (folders stripped) and deletes
    the zip.  A CSV that already exists with its source's size is not rewritten, and
    the download is skipped entirely when a previous unpack of the same URL left
    every wanted file in place.  Returns the paths of the wanted CSVs, sorted;
    raises ``FetchError``.
    """
    data_dir = _resolve(root) / DATA_DIRNAME
    if num_segs is not None and num_segs < 1:
        raise FetchError(f"num_segs must be >= 1, got {num_segs}")
    if mirror is not None:
        return _fetch_data_from_mirror(data_dir, _resolve(mirror), num_segs)

    done = _manifest_says_complete(data_dir, url, num_segs)
    if done is not None:
        return done
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=data_dir, prefix=".download.", suffix=".zip.part")
    os.close(fd)
    zip_path = Path(tmp_name)
    try:
        _download_to(url, zip_path)
        return _unpack_csvs(zip_path, url, data_dir, num_segs)
    finally:
        with contextlib.suppress(FileNotFoundError):
            zip_path.unlink()


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status (0 ok, 1 failure, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fetch_assets",
        description="Fetch models/tinyphysics.onnx and data/*.csv (from a mirror or the internet).")
    parser.add_argument("--mirror", metavar="DIR", default=None,
                        help=f"copy from DIR/models and DIR/data instead of downloading "
                             f"(default: ${MIRROR_ENV} if set)")
    parser.add_argument("--root", metavar="DIR", default=str(REPO_ROOT),
                        help="directory that receives models/ and data/ (default: the repo root)")
    parser.add_argument("--skip-data", action="store_true", help="fetch only the model")
    parser.add_argument("--num-segs", metavar="N", type=_positive_int, default=None,
                        help="fetch only the first N sorted CSV segments (default: all)")
    args = parser.parse_args(argv)

    mirror = _resolve(args.mirror) if args.mirror else _mirror_from_env()
    root = _resolve(args.root)
    source = f"mirror {mirror}" if mirror is not None else "the internet"
    try:
        model = fetch_model(root, mirror, url=MODEL_URL, expected_md5=MODEL_MD5)
        print(f"model: {model} (md5 {MODEL_MD5}, from {source})")
        if not args.skip_data:
            csvs = fetch_data(root, mirror, url=DATA_URL, num_segs=args.num_segs)
            print(f"data: {len(csvs)} CSV files in {root / DATA_DIRNAME} (from {source})")
    except FetchError as e:
        message = " ".join(str(e).split())  # always exactly one line
        print(f"fetch_assets: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fetch_assets: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
