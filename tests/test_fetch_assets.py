"""Tests for scripts/fetch_assets.py: mirror copies, downloads, idempotency, atomicity.

Downloads are exercised against a local http.server on 127.0.0.1 only; nothing
here touches the internet.  The mirror tests use $TINYPHYSICS_MIRROR when it
points at a real mirror (as in CI) and a tiny fake mirror otherwise.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from scripts import fetch_assets as fa

CSV_A = b"t,vEgo,aEgo,roll,targetLateralAcceleration,steerCommand\n0.0,30.0,0.0,0.01,0.5,-0.1\n"
CSV_B = b"t,vEgo,aEgo,roll,targetLateralAcceleration,steerCommand\n0.0,20.0,0.1,0.02,-0.3,\n0.1,20.1,0.1,0.02,-0.2,\n"
FAKE_MODEL = b"not really an onnx model, but bytes with a known md5\n" * 10


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def files_in(directory: Path) -> list[str]:
    """Every entry (hidden temp files included) in ``directory``; [] if it does not exist."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def make_fake_mirror(base: Path, n_csvs: int = 3, model: bytes | None = FAKE_MODEL) -> Path:
    mirror = base / "mirror"
    (mirror / "data").mkdir(parents=True)
    for i in range(n_csvs):
        (mirror / "data" / f"{i:05d}.csv").write_bytes(CSV_A + f"0.1,{i},0,0,0,\n".encode())
    (mirror / "data" / "README.txt").write_text("not a csv; must not be copied\n")
    if model is not None:
        (mirror / "models").mkdir()
        (mirror / "models" / "tinyphysics.onnx").write_bytes(model)
    return mirror


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _loopback_without_proxy(monkeypatch):
    """Make sure urllib talks to 127.0.0.1 directly even if a proxy is configured."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def mirror(tmp_path):
    """(mirror_dir, expected_model_md5): the real mirror from $TINYPHYSICS_MIRROR if usable, else a fake one."""
    env = os.environ.get(fa.MIRROR_ENV)
    if env:
        real = Path(env).resolve()
        if (real / "models" / "tinyphysics.onnx").is_file() and any((real / "data").glob("*.csv")):
            return real, fa.MODEL_MD5
    return make_fake_mirror(tmp_path), md5(FAKE_MODEL)


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server_self = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server_self.root), **kwargs)

            def do_GET(self):
                server_self.requests.append(self.path)
                if self.path.startswith("/short/"):
                    # Announce the full length but send only half of the body, then hang up.
                    body = (server_self.root / self.path[len("/short/"):]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    srv = Server(www)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


# --------------------------------------------------------------------------- mirror


def test_mirror_copies_first_n_csvs_and_verified_model(mirror, root):
    mirror_dir, model_md5 = mirror
    model = fa.fetch_model(root, mirror_dir, expected_md5=model_md5)
    assert model == root / "models" / "tinyphysics.onnx"
    assert md5(model.read_bytes()) == model_md5
    assert files_in(root / "models") == ["tinyphysics.onnx"]

    csvs = fa.fetch_data(root, mirror_dir, num_segs=2)
    expected = sorted(p.name for p in (mirror_dir / "data").glob("*.csv"))[:2]
    assert [p.name for p in csvs] == expected
    assert files_in(root / "data") == expected
    for name in expected:
        assert (root / "data" / name).read_bytes() == (mirror_dir / "data" / name).read_bytes()


def test_fake_mirror_copies_all_csvs_only(tmp_path, root):
    mirror_dir = make_fake_mirror(tmp_path, n_csvs=4)
    csvs = fa.fetch_data(root, mirror_dir)
    assert [p.name for p in csvs] == ["00000.csv", "00001.csv", "00002.csv", "00003.csv"]
    assert files_in(root / "data") == ["00000.csv", "00001.csv", "00002.csv", "00003.csv"]


def test_relative_mirror_is_resolved_against_cwd(tmp_path, root, monkeypatch):
    make_fake_mirror(tmp_path)
    monkeypatch.chdir(tmp_path)
    fa.fetch_model(root, "mirror", expected_md5=md5(FAKE_MODEL))
    fa.fetch_data(root, "mirror", num_segs=1)
    assert (root / "models" / "tinyphysics.onnx").read_bytes() == FAKE_MODEL
    assert files_in(root / "data") == ["00000.csv"]


def test_mirror_fetch_is_idempotent_and_repairs_wrong_files(tmp_path, root):
    mirror_dir = make_fake_mirror(tmp_path)
    fa.fetch_model(root, mirror_dir, expected_md5=md5(FAKE_MODEL))
    fa.fetch_data(root, mirror_dir)
    model = root / "models" / "tinyphysics.onnx"
    before = {p.name: os.stat(p) for p in [model, *sorted((root / "data").iterdir())]}

    fa.fetch_model(root, mirror_dir, expected_md5=md5(FAKE_MODEL))
    fa.fetch_data(root, mirror_dir)
    after = {p.name: os.stat(p) for p in [model, *sorted((root / "data").iterdir())]}
    for name, st in before.items():  # same inode and mtime: nothing was rewritten
        assert (after[name].st_ino, after[name].st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name

    # A truncated CSV and a corrupted model are replaced by the right content.
    (root / "data" / "00001.csv").write_bytes(b"t,vEgo\n")
    model.write_bytes(b"garbage")
    fa.fetch_model(root, mirror_dir, expected_md5=md5(FAKE_MODEL))
    fa.fetch_data(root, mirror_dir)
    assert model.read_bytes() == FAKE_MODEL
    assert (root / "data" / "00001.csv").read_bytes() == (mirror_dir / "data" / "00001.csv").read_bytes()


def test_mirror_model_with_wrong_md5_fails_and_leaves_nothing(tmp_path, root):
    mirror_dir = make_fake_mirror(tmp_path)  # FAKE_MODEL is not the real tinyphysics.onnx
    with pytest.raises(fa.FetchError) as exc:
        fa.fetch_model(root, mirror_dir)
    message = str(exc.value)
    assert "md5 mismatch" in message
    assert str(mirror_dir / "models" / "tinyphysics.onnx") in message
    assert fa.MODEL_MD5 in message and "\n" not in message
    assert files_in(root / "models") == []


def test_mirror_without_model_fails_clearly(tmp_path, root):
    mirror_dir = make_fake_mirror(tmp_path, model=None)
    with pytest.raises(fa.FetchError, match="mirror has no model") as exc:
        fa.fetch_model(root, mirror_dir)
    assert str(mirror_dir / "models" / "tinyphysics.onnx") in str(exc.value)
    assert files_in(root / "models") == []


def test_mirror_without_data_fails_clearly(tmp_path, root):
    mirror_dir = tmp_path / "empty_mirror"
    mirror_dir.mkdir()
    with pytest.raises(fa.FetchError, match="mirror has no data") as exc:
        fa.fetch_data(root, mirror_dir)
    assert str(mirror_dir / "data") in str(exc.value)
    assert files_in(root / "data") == []

    (mirror_dir / "data").mkdir()  # directory present, but no CSVs in it
    with pytest.raises(fa.FetchError, match=r"no \*\.csv files"):
        fa.fetch_data(root, mirror_dir)
    assert files_in(root / "data") == []


def test_mirror_with_too_few_csvs_for_num_segs_fails(tmp_path, root):
    mirror_dir = make_fake_mirror(tmp_path, n_csvs=2)
    with pytest.raises(fa.FetchError, match="only 2 CSV files, 5 requested"):
        fa.fetch_data(root, mirror_dir, num_segs=5)
    assert files_in(root / "data") == []


def test_main_with_missing_mirror_data_exits_nonzero_with_one_line(tmp_path, root, capsys, monkeypatch):
    mirror_dir = tmp_path / "m"
    (mirror_dir / "models").mkdir(parents=True)
    (mirror_dir / "models" / "tinyphysics.onnx").write_bytes(FAKE_MODEL)
    monkeypatch.setattr(fa, "MODEL_MD5", md5(FAKE_MODEL))
    monkeypatch.delenv(fa.MIRROR_ENV, raising=False)

    assert fa.main(["--mirror", str(mirror_dir), "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fetch_assets: error:")
    assert str(mirror_dir / "data") in err
    assert files_in(root / "data") == []

    # --skip-data only needs the model, and the mirror may come from the environment.
    monkeypatch.setenv(fa.MIRROR_ENV, str(mirror_dir))
    assert fa.main(["--root", str(root), "--skip-data"]) == 0
    assert (root / "models" / "tinyphysics.onnx").read_bytes() == FAKE_MODEL


def test_main_with_real_md5_rejects_fake_mirror(tmp_path, root, capsys):
    mirror_dir = make_fake_mirror(tmp_path)
    assert fa.main(["--mirror", str(mirror_dir), "--root", str(root)]) == 1
    assert "md5 mismatch" in capsys.readouterr().err
    assert files_in(root / "models") == []
    assert files_in(root / "data") == []


def test_main_with_real_mirror(root, capsys):
    env = os.environ.get(fa.MIRROR_ENV)
    if not env or not (Path(env) / "models" / "tinyphysics.onnx").is_file():
        pytest.skip(f"${fa.MIRROR_ENV} does not point at a real mirror")
    assert fa.main(["--mirror", env, "--root", str(root), "--num-segs", "3"]) == 0
    assert md5((root / "models" / "tinyphysics.onnx").read_bytes()) == fa.MODEL_MD5
    assert files_in(root / "data") == ["00000.csv", "00001.csv", "00002.csv"]


def test_main_rejects_bad_num_segs(capsys):
    with pytest.raises(SystemExit) as exc:
        fa.main(["--num-segs", "0"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- download


def test_download_unpacks_csvs_flat(server, root):
    archive = make_zip({
        "SYNTHETIC_V0/": b"",
        "SYNTHETIC_V0/00000.csv": CSV_A,
        "SYNTHETIC_V0/00001.csv": CSV_B,
        "SYNTHETIC_V0/README.md": b"not a csv\n",
        "__MACOSX/SYNTHETIC_V0/._00000.csv": b"resource fork junk",
    })
    (server.root / "SYNTHETIC_V0.zip").write_bytes(archive)
    url = server.url("SYNTHETIC_V0.zip")

    csvs = fa.fetch_data(root, url=url)
    assert [p.name for p in csvs] == ["00000.csv", "00001.csv"]
    assert (root / "data" / "00000.csv").read_bytes() == CSV_A
    assert (root / "data" / "00001.csv").read_bytes() == CSV_B
    # No subfolder, no zip and no temp file left behind (only the manifest beside the CSVs).
    assert files_in(root / "data") == sorted(["00000.csv", "00001.csv", fa.MANIFEST_NAME])
    assert server.requests == ["/SYNTHETIC_V0.zip"]

    # Second run: everything is in place, so the archive is not downloaded again.
    stat = os.stat(root / "data" / "00000.csv")
    fa.fetch_data(root, url=url)
    assert server.requests == ["/SYNTHETIC_V0.zip"]
    assert os.stat(root / "data" / "00000.csv").st_mtime_ns == stat.st_mtime_ns

    # A missing CSV triggers a new download that restores it.
    (root / "data" / "00001.csv").unlink()
    fa.fetch_data(root, url=url)
    assert len(server.requests) == 2
    assert (root / "data" / "00001.csv").read_bytes() == CSV_B


def test_download_num_segs_takes_first_sorted(server, root):
    archive = make_zip({f"SYNTHETIC_V0/{i:05d}.csv": CSV_A for i in (2, 0, 1)})
    (server.root / "d.zip").write_bytes(archive)
    csvs = fa.fetch_data(root, url=server.url("d.zip"), num_segs=2)
    assert [p.name for p in csvs] == ["00000.csv", "00001.csv"]
    assert files_in(root / "data") == sorted(["00000.csv", "00001.csv", fa.MANIFEST_NAME])


def test_download_model_verifies_md5(server, root):
    (server.root / "model.onnx").write_bytes(FAKE_MODEL)
    path = fa.fetch_model(root, url=server.url("model.onnx"), expected_md5=md5(FAKE_MODEL))
    assert path.read_bytes() == FAKE_MODEL
    fa.fetch_model(root, url=server.url("model.onnx"), expected_md5=md5(FAKE_MODEL))
    assert server.requests == ["/model.onnx"]  # already correct: not fetched again

    other = root / "other"
    with pytest.raises(fa.FetchError, match="md5 mismatch") as exc:
        fa.fetch_model(other, url=server.url("model.onnx"))  # default (real) md5
    assert server.url("model.onnx") in str(exc.value)
    assert files_in(other / "models") == []


def test_download_404_leaves_nothing_and_names_url(server, root, capsys, monkeypatch):
    url = server.url("missing/SYNTHETIC_V0.zip")
    with pytest.raises(fa.FetchError) as exc:
        fa.fetch_data(root, url=url)
    assert url in str(exc.value) and "404" in str(exc.value)
    assert files_in(root / "data") == []

    with pytest.raises(fa.FetchError, match="404"):
        fa.fetch_model(root, url=server.url("missing.onnx"))
    assert files_in(root / "models") == []

    # The CLI turns the same failure into exit status 1 and one line naming the URL.
    monkeypatch.delenv(fa.MIRROR_ENV, raising=False)
    monkeypatch.setattr(fa, "MODEL_URL", server.url("missing.onnx"))
    assert fa.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and server.url("missing.onnx") in err
    assert files_in(root / "models") == []


def test_connection_refused_fails_clearly(root):
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens on this port any more
    url = f"http://127.0.0.1:{port}/SYNTHETIC_V0.zip"
    with pytest.raises(fa.FetchError, match="failed") as exc:
        fa.fetch_data(root, url=url)
    assert url in str(exc.value)
    assert files_in(root / "data") == []


def test_truncated_zip_fails_clearly(server, root):
    archive = make_zip({"SYNTHETIC_V0/00000.csv": CSV_A * 50, "SYNTHETIC_V0/00001.csv": CSV_B * 50})
    (server.root / "cut.zip").write_bytes(archive[: len(archive) * 2 // 3])
    url = server.url("cut.zip")
    with pytest.raises(fa.FetchError, match="bad zip") as exc:
        fa.fetch_data(root, url=url)
    assert url in str(exc.value)
    assert files_in(root / "data") == []


def test_corrupted_zip_member_fails_without_partial_csv(server, root):
    payload = bytes(range(256)) * 200
    archive = bytearray(make_zip({"SYNTHETIC_V0/00000.csv": payload}))
    offset = archive.index(b"00000.csv") + len("00000.csv") + 40  # inside the compressed data
    archive[offset] ^= 0xFF
    (server.root / "corrupt.zip").write_bytes(bytes(archive))
    with pytest.raises(fa.FetchError, match="bad zip"):
        fa.fetch_data(root, url=server.url("corrupt.zip"))
    assert files_in(root / "data") == []


def test_zip_without_csvs_fails_clearly(server, root):
    (server.root / "nocsv.zip").write_bytes(make_zip({"SYNTHETIC_V0/readme.txt": b"hi"}))
    with pytest.raises(fa.FetchError, match=r"no \*\.csv files"):
        fa.fetch_data(root, url=server.url("nocsv.zip"))
    assert files_in(root / "data") == []


def test_connection_dropped_mid_download_fails_clearly(server, root):
    archive = make_zip({"SYNTHETIC_V0/00000.csv": CSV_A * 100})
    (server.root / "full.zip").write_bytes(archive)
    url = server.url("short/full.zip")
    with pytest.raises(fa.FetchError, match="incomplete") as exc:
        fa.fetch_data(root, url=url)
    assert url in str(exc.value)
    assert files_in(root / "data") == []
