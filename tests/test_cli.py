"""The `casstore` console script, driven in real subprocesses through a whole operator scenario."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys

import pytest

from . import sqlite_writer

def run(*args, env=None, input=None, cwd=None, entry=None):
    """Run the CLI as a subprocess; `entry` picks the installed console script instead of -m."""
    cmd = [entry] if entry else [sys.executable, "-m", "casstore_cli.main"]
    return subprocess.run(cmd + [str(a) for a in args], env=env, input=input, cwd=cwd,
                          capture_output=True, timeout=120)


def ok(*args, **kw):
    r = run(*args, **kw)
    assert r.returncode == 0, (args, r.returncode, r.stdout.decode(), r.stderr.decode())
    return r


def data(*args, **kw):
    return json.loads(ok(*args, "--json", **kw).stdout)


def tree(root, skip=("events.db",)):
    """{relative path: (kind, mode, content or target)} of a tree, leaving out the live database files."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if any(rel.startswith(s) for s in skip):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
    return out


def check_db(path):
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e["CASSTORE_REPO"] = str(tmp_path / "repo")
    e.pop("CASSTORE_INDEX_PATH", None)
    e.pop("CASSTORE_COMPRESSION_LEVEL", None)
    return e


def make_workspace(ws):
    (ws / "uploads").mkdir(parents=True)
    (ws / "generated" / "empty").mkdir(parents=True)
    (ws / "mapping.json").write_text(json.dumps({f"k{i}": i for i in range(500)}))
    (ws / "uploads" / "report.bin").write_bytes(os.urandom(1 << 20))
    (ws / "uploads" / "notes.txt").write_text("first notes\n" * 100)
    (ws / "generated" / "old.log").write_text("log line\n" * 50)
    os.symlink("uploads/notes.txt", ws / "latest-notes")


def test_whole_operator_scenario(tmp_path, env):
    ws = tmp_path / "ws"
    make_workspace(ws)
    # a steady writer, not one that grows the db by megabytes between two snapshots
    writer, stop = sqlite_writer.start(tmp_path, ws / "events.db", pause=0.002)
    try:

        created = ok("init", env=env)
        assert str(tmp_path / "repo") in created.stdout.decode()
        again = run("init", env=env)
        assert again.returncode == 1 and b"already" in again.stderr

        expect1 = tree(ws)
        snap1 = data("snapshot", ws, "--agent", "bot", "--session", "s1", "-m", "before deploy",
                     "--meta", "step=1", env=env)
        assert snap1["kind"] == "dir" and snap1["metadata"] == {"step": "1"}

        # edit in the middle, add, delete
        report = bytearray((ws / "uploads" / "report.bin").read_bytes())
        report[400_000:400_016] = b"EDITED-IN-MIDDLE"
        (ws / "uploads" / "report.bin").write_bytes(report)
        (ws / "uploads" / "new.txt").write_text("brand new")
        (ws / "generated" / "old.log").unlink()
        expect2 = tree(ws)
        snap2_out = ok("snapshot", ws, "--agent", "bot", "--session", "s1", "-m", "after step", env=env)
        first_line = snap2_out.stdout.decode().splitlines()[0]
        assert first_line.startswith("snapshot ") and "saved" in first_line
        snap2_id = first_line.split()[1]
    finally:
        stop.write_text("")
        writer.wait(timeout=30)

    listed = data("ls", env=env)
    assert [s["id"] for s in listed] == [snap1["id"], snap2_id]
    assert listed[1]["stored_size"] < 700_000     # a few chunks of the 1 MiB file plus the db's new pages
    assert data("ls", "--agent", "nobody", env=env) == []
    table = ok("ls", env=env).stdout.decode()
    assert "before deploy" in table and snap2_id[:12] in table

    shown = data("show", snap2_id[:10], env=env)
    assert shown["parent"] == snap1["id"] and shown["tree"]["sqlite_databases"] == 1
    human = ok("show", snap2_id[:10], env=env).stdout.decode()
    assert "merkle root" in human and snap1["id"] in human

    diff = data("diff", snap1["id"][:12], snap2_id[:12], env=env)
    files = diff["files"]
    assert [x["path"] for x in files["added"]] == ["uploads/new.txt"]
    assert [x["path"] for x in files["removed"]] == ["generated/old.log"]
    modified = {x["path"] for x in files["modified"]}
    assert "uploads/report.bin" in modified and "mapping.json" not in modified
    assert "M uploads/report.bin" in ok("diff", snap1["id"][:12], snap2_id[:12], env=env).stdout.decode()

    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    ok("restore", snap1["id"], out1, env=env)
    ok("restore", snap2_id, out2, env=env)
    assert tree(out1) == expect1 and tree(out2) == expect2
    assert not any(n.startswith("events.db-") for n in os.listdir(out2))
    rows1, rows2 = check_db(out1 / "events.db"), check_db(out2 / "events.db")
    assert 0 < rows1 <= rows2

    busy = run("restore", snap2_id, out1, env=env)
    assert busy.returncode == 1 and str(out1).encode() in busy.stderr and b"not empty" in busy.stderr
    ok("restore", snap2_id, out1, "--overwrite", env=env)

    # a JSON state from stdin, restored as JSON and as msgpack
    state = {"messages": [{"role": "user", "content": "hi"}], "memory": {"facts": ["a", "b"]}}
    s1 = data("snapshot", "-", "--agent", "chat", env=env, input=json.dumps(state).encode())
    state["memory"]["facts"].append("c")
    s2 = data("snapshot", "-", "--agent", "chat", env=env, input=json.dumps(state).encode())
    ok("restore", s2["id"], tmp_path / "state.json", env=env)
    assert json.loads((tmp_path / "state.json").read_text()) == state
    sdiff = data("diff", s1["id"], s2["id"], env=env)
    assert {"path": "state['memory']['facts']", "change": "length 2 -> 3"} in sdiff["paths"]

    stats = data("stats", env=env)
    assert stats["snapshots"] == 4 and stats["logical_bytes"] > stats["stored_bytes"] > 0

    ok("verify", env=env)
    assert data("verify", "--read-data", env=env)["ok"] is True

    # retention and gc: keep the newest of the workspace lineage, then free the rest
    forgotten = data("forget", "--keep-last", "1", "--agent", "bot", "--session", "s1", env=env)
    assert [s["id"] for s in forgotten["forgotten"]] == [snap1["id"]]
    ok("gc", env=env)
    assert [s["id"] for s in data("ls", "--agent", "bot", env=env)] == [snap2_id]
    ok("verify", "--read-data", env=env)
    shutil.rmtree(out2)
    ok("restore", snap2_id, out2, env=env)
    assert tree(out2) == expect2

    explained = ok("config", "show", "--explain", env=env).stdout.decode()
    assert "env CASSTORE_REPO" in explained and "compression_level: 3" in explained
    cfg = data("config", "show", "--explain", "--repo", tmp_path / "repo", env=env)
    assert cfg["repo"]["source"] == "flag --repo" and cfg["repository_config"]["value"]["hash"] == "blake3"

    ok("index", "rebuild", env=env)
    assert [s["id"] for s in data("ls", "--agent", "bot", env=env)] == [snap2_id]

    # damage a pack: deep verify exits 1 and names the problem
    packs = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "repo" / "packs") for f in fs]
    victim = max(packs, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = run("verify", "--read-data", env=env)
    assert bad.returncode == 1 and b"problem" in bad.stderr


def test_errors_are_one_line_with_exit_codes(tmp_path, env):
    ok("init", env=env)
    unknown = run("show", "ffffffffff", env=env)
    assert unknown.returncode == 1
    err = unknown.stderr.decode().strip()
    assert err.startswith("casstore: error:") and "ffffffffff" in err and len(err.splitlines()) == 1

    not_hex = run("restore", "nothex!", tmp_path / "x", env=env)
    assert not_hex.returncode == 1 and b"nothex!" in not_hex.stderr

    assert run("ls", "--no-such-option", env=env).returncode == 2
    assert run("no-such-command", env=env).returncode == 2
    assert run("forget", env=env).returncode == 2            # no policy given
    assert run("snapshot", tmp_path / "missing-dir", env=env).returncode == 1

    missing = tmp_path / "nowhere"
    r = run("--repo", missing, "ls")
    assert r.returncode == 1 and str(missing).encode() in r.stderr and b"Traceback" not in r.stderr
    r = run("-v", "--repo", missing, "stats")
    assert r.returncode == 1 and b"Traceback" in r.stderr
    assert not missing.exists()

    r = run("config", "show", "--repo", missing)     # explains even without a repository, then exits 1
    assert r.returncode == 1 and str(missing).encode() in r.stdout


def test_copy_between_repositories_sends_only_missing_chunks(tmp_path, env):
    src, dst = tmp_path / "repo", tmp_path / "mirror"
    ws = tmp_path / "ws"
    make_workspace(ws)
    ok("init", env=env)
    a = data("snapshot", ws, env=env)
    (ws / "uploads" / "notes.txt").write_text("second notes\n")
    b = data("snapshot", ws, env=env)
    assert run("copy", src, dst, env=env).returncode == 1        # no repository there without --init
    first = data("copy", src, dst, "--init", env=env)
    assert sorted(first["copied"]) == sorted([a["id"], b["id"]]) and first["chunks_sent"] > 0
    again = data("copy", src, dst, env=env)
    assert again["copied"] == [] and again["chunks_sent"] == 0
    assert [s["id"] for s in data("ls", "--repo", dst, env=env)] == [a["id"], b["id"]]
    ok("--repo", dst, "restore", b["id"], tmp_path / "out", env=env)
    assert tree(tmp_path / "out") == tree(ws)
    ok("verify", "--read-data", "--repo", dst, env=env)


@pytest.mark.skipif(shutil.which("casstore") is None, reason="console script not installed")
def test_installed_console_script(tmp_path, env):
    exe = shutil.which("casstore")
    assert b"snapshot" in ok("--help", entry=exe).stdout
    ok("init", env=env, entry=exe)
    (tmp_path / "f.txt").write_text("hello")
    snap = json.loads(ok("snapshot", tmp_path / "f.txt", "--json", env=env, entry=exe).stdout)
    ok("restore", snap["id"][:8], tmp_path / "out", env=env, entry=exe)
    assert (tmp_path / "out" / "f.txt").read_text() == "hello"


def test_labels_from_snapshot_to_ls_and_show(tmp_path, env):
    ws = tmp_path / "ws"
    make_workspace(ws)
    ok("init", env=env)
    first = data("snapshot", ws, "--agent", "bot", "--label", "release", "--label", "v1", env=env)
    ok("snapshot", "-", "--agent", "bot", "--label", "v2", input=b'{"step": 2}', env=env)
    third = data("snapshot", "-", "--agent", "bot", "--session", "s2", "--label", "release",
                 input=b'{"step": 3}', env=env)
    assert first["labels"] == ["release", "v1"] and third["labels"] == ["release"]
    assert [i["id"] for i in data("ls", "--agent", "bot", "--label", "release", env=env)] == [first["id"], third["id"]]
    assert [i["id"] for i in data("ls", "--agent", "bot", "--session", "s2", "--label", "release", env=env)] == \
        [third["id"]]
    assert data("ls", "--agent", "bot", "--label", "v3", env=env) == []
    assert "labels" in ok("show", first["id"], env=env).stdout.decode()
    r = run("ls", "--label", "release", env=env)
    assert r.returncode != 0 and b"--label needs --agent" in r.stderr


def test_restore_by_path_and_cat_one_file(tmp_path, env):
    ws = tmp_path / "ws"
    make_workspace(ws)
    ok("init", env=env)
    state = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "memory": {"facts": ["a", "b"]}}
    snap = data("snapshot", "-", "--agent", "chat", env=env, input=json.dumps(state).encode())
    out = ok("restore", snap["id"], "-", "--path", "memory", "--path", "facts", env=env).stdout
    assert json.loads(out) == ["a", "b"]
    ok("restore", snap["id"], tmp_path / "last.json", "--path", "messages", "--path", "-1", env=env)
    assert json.loads((tmp_path / "last.json").read_text()) == {"role": "assistant", "content": "hello"}
    missing = run("restore", snap["id"], "-", "--path", "memory", "--path", "plans", env=env)
    assert missing.returncode == 1 and b"state['memory'] has no key 'plans'" in missing.stderr
    assert snap["id"].encode() in missing.stderr
    folder = data("snapshot", ws, env=env)
    refused = run("restore", folder["id"], tmp_path / "out", "--path", "uploads", env=env)
    assert refused.returncode == 1 and b"--path applies to state snapshots" in refused.stderr
    assert not (tmp_path / "out").exists()
    # one file of a directory snapshot
    assert ok("cat", folder["id"], "uploads/report.bin", env=env).stdout == (ws / "uploads" / "report.bin").read_bytes()
    assert ok("cat", folder["id"][:8], "uploads/notes.txt", env=env).stdout == b"first notes\n" * 100
    gone = run("cat", folder["id"], "uploads/nope.txt", env=env)
    assert gone.returncode == 1 and b"holds no 'uploads/nope.txt'" in gone.stderr
    state_cat = run("cat", snap["id"], "memory", env=env)
    assert state_cat.returncode == 1 and b"is a state snapshot; use: casstore restore" in state_cat.stderr
