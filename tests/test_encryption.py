"""Encrypted repositories: round trips, nothing readable in the bucket, passwords, tampering, verify, gc, copy."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import numpy as np
import pytest

import casstore
from casstore import crypto, manifest
from casstore.errors import IntegrityError

SECRET = "sk-live-TOPSECRET-4242-do-not-leak"


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch, tmp_path):
    """Cheaper scrypt for tests (the format records n, so unlock follows it) and a private index cache."""
    monkeypatch.setattr(crypto, "SCRYPT_N", 1 << 12)
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(crypto.ENV_PASSWORD, raising=False)
    real = crypto.wrap
    monkeypatch.setattr(crypto, "wrap", lambda *a, n=None, **k: real(*a, n=1 << 12, **k))


def state(step: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"my api key is {SECRET}, turn {i}"} for i in range(step + 20)],
            "memory": {"notes": "remember " + SECRET},
            "emb": np.arange(20_000 + 100 * step, dtype=np.float32).reshape(-1, 100)}


def raw_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def equal(a: dict, b: dict) -> bool:
    return a["messages"] == b["messages"] and a["memory"] == b["memory"] and np.array_equal(a["emb"], b["emb"])


def open_enc(path: Path, password: str = "correct horse", **kw) -> casstore.Store:
    return casstore.open(str(path), password=password, **kw)


def test_round_trip_state_and_dir_and_no_plaintext_in_bucket(tmp_path):
    repo = tmp_path / "repo"
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "creds.txt").write_text(f"token={SECRET}\n" * 50)
    (ws / "big.bin").write_bytes(os.urandom(300_000))
    with open_enc(repo, encrypt=True) as s:
        assert s.encrypted and s._repo.config.encryption in ("aes-256-gcm", "chacha20-poly1305")
        infos = [s.snapshot(state(i), "a", "s", description=f"step with {SECRET}", metadata={"k": SECRET})
                 for i in range(3)]
        d = s.snapshot_dir(str(ws), "a", "ws")
        for i, info in enumerate(infos):
            assert equal(s.restore(info.id), state(i))
        s.restore_dir(d.id, str(tmp_path / "out"))
        assert (tmp_path / "out" / "sub" / "creds.txt").read_text() == (ws / "sub" / "creds.txt").read_text()
        assert (tmp_path / "out" / "big.bin").read_bytes() == (ws / "big.bin").read_bytes()
        assert infos[1].new_chunk_count < infos[0].new_chunk_count      # dedup still works
        assert s.verify(deep=True).ok
    files = raw_files(repo)
    assert any("packs" in p.parts for p in files) and not any(p.name == "data.mdb" for p in files)  # index lives elsewhere
    for p in files:
        data = p.read_bytes()
        for needle in (SECRET.encode(), b"TOPSECRET", b"remember", b"role", b"creds.txt", b"messages"):
            assert needle not in data, (p, needle)


def test_chunk_ids_are_keyed(tmp_path):
    text = (f"{SECRET} " * 3000).encode()
    with open_enc(tmp_path / "enc", encrypt=True) as s:
        info = s.snapshot({"blob": text})
        chunk_ids = set(s.chunks(info.id))
        assert s.proof_key is not None
        with casstore.open(str(tmp_path / "plain")) as p:
            plain_ids = set(p.chunks(p.snapshot({"blob": text}).id))
    assert chunk_ids.isdisjoint(plain_ids)
    assert blake3.blake3(text).hexdigest() not in chunk_ids


def test_wrong_or_missing_password_is_one_clear_error(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    open_enc(repo, encrypt=True).close()
    with pytest.raises(casstore.AuthenticationError, match=f"wrong password for repository {repo}"):
        open_enc(repo, "nope")
    with pytest.raises(casstore.ConfigurationError, match="is encrypted"):
        casstore.open(str(repo))
    monkeypatch.setenv("CASSTORE_PASSWORD", "correct horse")
    casstore.open(str(repo)).close()
    key_file = tmp_path / "pw"
    key_file.write_text("correct horse\n")
    monkeypatch.delenv("CASSTORE_PASSWORD")
    casstore.open(str(repo), key_file=str(key_file)).close()
    with pytest.raises(casstore.ConfigurationError, match="not encrypted"):
        casstore.open(str(tmp_path / "plain"), password="x")   # created unencrypted: an explicit password is refused


def test_two_passwords_and_password_change_without_rewriting_data(tmp_path):
    repo = tmp_path / "repo"
    with open_enc(repo, "first", encrypt=True) as s:
        info = s.snapshot(state())
        s.add_password("second")
        assert len(s.keys()) == 2
    packs_before = sorted(p.name for p in (repo / "packs").rglob("*") if p.is_file())
    with open_enc(repo, "second") as s:
        assert equal(s.restore(info.id), state())
        s.change_password("third")
    with pytest.raises(casstore.AuthenticationError):
        open_enc(repo, "second")
    for pw in ("first", "third"):
        with open_enc(repo, pw) as s:
            assert equal(s.restore(info.id), state())
    with open_enc(repo, "third") as s:
        other = [k["id"] for k in s.keys() if not k["current"]]
        s.remove_key(other[0])
        with pytest.raises(casstore.ConfigurationError):
            s.remove_key(s.keys()[0]["id"])     # the last one, and the one in use
    with pytest.raises(casstore.AuthenticationError):
        open_enc(repo, "first")
    assert sorted(p.name for p in (repo / "packs").rglob("*") if p.is_file()) == packs_before


def test_tampered_pack_byte_raises_integrity_error(tmp_path):
    repo = tmp_path / "repo"
    with open_enc(repo, encrypt=True) as s:
        info = s.snapshot({"text": SECRET * 1000})
    pack = next(p for p in (repo / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[20] ^= 0x01                        # inside the first sealed chunk
    pack.write_bytes(bytes(data))
    with open_enc(repo) as s:
        with pytest.raises(IntegrityError):
            s.restore(info.id)
        report = s.verify(deep=True)
        assert not report.ok and any(p.kind in ("pack", "chunk") for p in report.problems)


def test_tampered_manifest_and_trailer(tmp_path):
    repo = tmp_path / "repo"
    with open_enc(repo, encrypt=True) as s:
        info = s.snapshot(state())
    man = next(p for p in (repo / "snapshots").rglob("*") if p.is_file())
    data = bytearray(man.read_bytes())
    data[-1] ^= 0x80
    man.write_bytes(bytes(data))
    pack = next(p for p in (repo / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[-40] ^= 0x01                       # in the sealed trailer
    pack.write_bytes(bytes(data))
    with open_enc(repo) as s:
        report = s.verify()
        kinds = {p.kind for p in report.errors}
        assert {"manifest", "pack"} <= kinds, report.problems
        with pytest.raises(IntegrityError):
            s._repo.load_manifest(bytes.fromhex(info.id))


def test_index_rebuild_needs_and_uses_the_key(tmp_path):
    repo = tmp_path / "repo"
    with open_enc(repo, encrypt=True) as s:
        ids = [s.snapshot(state(i), "a", "s").id for i in range(2)]
        assert s.index_rebuild() == 2
        assert equal(s.restore(ids[1]), state(1))
    with open_enc(repo, index_path=str(tmp_path / "fresh-index")) as s:
        assert [i.id for i in s.list()] == ids
        assert equal(s.restore(agent_id="a", session_id="s"), state(1))


def test_verify_without_key_checks_structure_and_pack_hashes(tmp_path):
    repo = tmp_path / "repo"
    with open_enc(repo, encrypt=True) as s:
        s.snapshot(state(0))
        s.snapshot(state(1))
    report = casstore.verify_without_key(str(repo), deep=True)
    assert report.ok and report.packs_checked >= 1 and report.snapshots_checked == 2
    pack = next(p for p in (repo / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[3] ^= 0x01
    pack.write_bytes(bytes(data))
    assert casstore.verify_without_key(str(repo)).ok          # quick: footers only
    deep = casstore.verify_without_key(str(repo), deep=True)
    assert not deep.ok and "does not hash to its name" in str(deep.errors[0])


def test_proofs_need_the_id_key(tmp_path):
    with open_enc(tmp_path / "repo", encrypt=True) as s:
        info = s.snapshot(state())
        chunk = s.chunks(info.id)[3]
        proof = s.prove(info.id, chunk)
        assert casstore.verify_proof(proof, info.root, key=s.proof_key)
        assert not casstore.verify_proof(proof, info.root)
        assert not casstore.verify_proof(proof, info.root, key=os.urandom(32))


def test_gc_on_encrypted_repository(tmp_path):
    with open_enc(tmp_path / "repo", encrypt=True) as s:
        infos = [s.snapshot({"turn": i, "blob": os.urandom(200_000)}, "a", "s") for i in range(4)]
        s.forget(keep_last=1)
        first = s.gc(grace=0)
        assert first.packs_condemned + first.packs_repacked >= 1
        second = s.gc(grace=0)
        assert second.packs_deleted >= 1
        assert s.restore(infos[-1].id)["turn"] == 3
        assert s.verify(deep=True).ok


def test_chacha20_poly1305_repository(tmp_path):
    with open_enc(tmp_path / "repo", encrypt="chacha20-poly1305") as s:
        info = s.snapshot(state())
    with open_enc(tmp_path / "repo") as s:
        assert s._repo.config.encryption == "chacha20-poly1305" and s._repo.sealer.cipher == "chacha20-poly1305"
        assert equal(s.restore(info.id), state()) and s.verify(deep=True).ok
    with pytest.raises(casstore.ConfigurationError, match="unknown cipher"):
        open_enc(tmp_path / "other", encrypt="rot13")


def test_copy_between_encrypted_repositories(tmp_path):
    src = open_enc(tmp_path / "src", "pw-src", encrypt=True)
    try:
        ids = [src.snapshot(state(i), "a", "s").id for i in range(2)]
        # same master key, another password: copy works, data is sealed again with fresh nonces
        with open_enc(tmp_path / "dst", "pw-dst", key_from=src, encrypt="chacha20-poly1305") as dst:
            report = src.copy_to(dst)
            assert report.copied == ids and report.verified
            assert equal(dst.restore(ids[1]), state(1))
            assert dst.verify(deep=True).ok
        # another master key, or an unencrypted destination: refused clearly, nothing written
        with open_enc(tmp_path / "other", "pw", encrypt=True) as other:
            with pytest.raises(casstore.ConfigurationError, match="chunk ids are computed differently"):
                src.copy_to(other)
            assert other.list() == []
        with casstore.open(str(tmp_path / "plain")) as plain:
            with pytest.raises(casstore.ConfigurationError, match="chunk ids are computed differently"):
                src.copy_to(plain)
    finally:
        src.close()


def test_unencrypted_repository_unchanged(tmp_path):
    with casstore.open(str(tmp_path / "plain")) as s:
        info = s.snapshot({"text": SECRET * 10})
        assert not s.encrypted and s.proof_key is None and s._repo.config.encryption is None
        [chunk] = s.chunks(info.id)
        raw = s._repo.read(s._repo.fields(bytes.fromhex(info.id)))
        assert chunk == blake3.blake3(raw).hexdigest()                               # ids: plain BLAKE3
        stored = (tmp_path / "plain" / "snapshots" / info.id[:2] / info.id).read_bytes()
        plain = manifest.unpack(stored)
        assert len(stored) < len(plain)                                          # stored primed-zstd (format 2)
        assert blake3.blake3(plain).hexdigest() == info.id                        # id = plain hash of plain bytes
        pack = next(p for p in (tmp_path / "plain" / "packs").rglob("*") if p.is_file()).read_bytes()
        assert pack[-8:] == b"CASPACK1" and int.from_bytes(pack[-28:-24], "little") == 1
        assert casstore.verify_proof(s.prove(info.id, chunk), info.root)
    assert not (tmp_path / "plain" / "keys").exists()


def test_cli_encrypted_repository(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "CASSTORE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("CASSTORE_PASSWORD", None)
    repo = str(tmp_path / "repo")
    (tmp_path / "pw1").write_text("first\n")
    (tmp_path / "pw2").write_text("second\n")

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "casstore_cli.main", *args], input=stdin, env=env,
                              capture_output=True, timeout=60)

    assert run("init", repo, "--encrypt", "--password-file", str(tmp_path / "pw1")).returncode == 0
    snap = run("snapshot", "--repo", repo, "--password-file", str(tmp_path / "pw1"), "-", stdin=f'{{"k": "{SECRET}"}}'.encode())
    assert snap.returncode == 0, snap.stderr
    locked = run("ls", "--repo", repo)
    assert locked.returncode == 1 and b"encrypted" in locked.stderr
    wrong = run("ls", "--repo", repo, "--password-file", str(tmp_path / "pw2"))
    assert wrong.returncode == 1 and b"wrong password" in wrong.stderr
    keyless = run("verify", "--repo", repo, "--read-data")
    assert keyless.returncode == 0 and b"structure and pack hashes only" in keyless.stderr
    assert run("key", "passwd", "--repo", repo, "--password-file", str(tmp_path / "pw1"),
               "--new-password-file", str(tmp_path / "pw2")).returncode == 0
    assert run("ls", "--repo", repo, "--password-file", str(tmp_path / "pw1")).returncode == 1
    full = run("verify", "--repo", repo, "--read-data", "--password-file", str(tmp_path / "pw2"))
    assert full.returncode == 0, full.stderr
    for p in raw_files(Path(repo)):
        assert SECRET.encode() not in p.read_bytes()


def test_encrypted_repository_on_s3_two_machines(s3_server, s3_url, tmp_path):
    opts = s3_server.storage_options
    with casstore.open(s3_url, storage_options=opts, index_path=str(tmp_path / "a"), password="pw", encrypt=True) as a:
        info = a.snapshot(state(0), "bot", "s")
    with casstore.open(s3_url, storage_options=opts, index_path=str(tmp_path / "b"), password="pw") as b:
        assert [i.id for i in b.list()] == [info.id]        # trailers and manifests opened from the bucket
        assert equal(b.restore(info.id), state(0))
        assert b.verify(deep=True).ok
    assert casstore.verify_without_key(s3_url, storage_options=opts, deep=True).ok
    with pytest.raises(casstore.AuthenticationError):
        casstore.open(s3_url, storage_options=opts, index_path=str(tmp_path / "c"), password="nope")


def test_tampered_chunk_inside_a_run_of_sealed_chunks_is_named(tmp_path):
    """A big blob's sealed chunks are opened side by side and decoded as one run; a flipped byte in
    one of them still fails its own authentication, named with its chunk and pack."""
    repo = tmp_path / "repo"
    blob = " ".join(f"line {i} of a long tool result" for i in range(200_000)).encode()
    with open_enc(repo, encrypt=True, cache_bytes=1 << 20) as s:   # a restore past the cache: decoded in place
        info = s.snapshot({"blob": blob})
        assert s.restore(info.id) == {"blob": blob}
        locs = s._repo.index.locate([bytes.fromhex(h) for h in s.chunks(info.id)])
    assert len(locs) > 3
    victim, loc = sorted(locs.items(), key=lambda kv: kv[1].offset)[len(locs) // 2]
    [pack] = [p for p in (repo / "packs").rglob("*") if p.is_file() and p.name == loc.pack.hex()]
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0x01
    pack.write_bytes(bytes(data))
    with open_enc(repo, cache_bytes=1 << 20) as s:
        with pytest.raises(IntegrityError, match=f"chunk {victim.hex()} in pack {loc.pack.hex()}: .*authenticate"):
            s.restore(info.id)


def test_sealing_works_without_the_into_methods_of_older_cryptography(tmp_path, monkeypatch):
    """cryptography before encrypt_into/decrypt_into (the floor in pyproject is older): same bytes
    format, so either side reads what the other sealed."""
    from casstore import crypto
    sealer = crypto.AeadSealer(os.urandom(32), crypto.AES_GCM)
    modern = sealer.seal(b"payload" * 100, b"ad")

    class Old:   # only encrypt/decrypt, as before the *_into methods
        def __init__(self, aead):
            self.encrypt, self.decrypt = aead.encrypt, aead.decrypt

    monkeypatch.setattr(sealer, "_aead", Old(sealer._aead))
    old = sealer.seal(b"payload" * 100, b"ad")
    for sealed in (modern, old):
        assert sealer.open(sealed, b"ad", "x") == b"payload" * 100
        out = memoryview(bytearray(len(sealed) - crypto.OVERHEAD))
        sealer.open_into(sealed, b"ad", "x", out)
        assert bytes(out) == b"payload" * 100
    with pytest.raises(IntegrityError, match="does not authenticate"):
        sealer.open_into(bytes(old[:-1]) + bytes([old[-1] ^ 1]), b"ad", "x", memoryview(bytearray(700)))
