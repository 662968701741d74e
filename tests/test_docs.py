"""Docs that run: every ```bash / ```sh / ```shell / ```python block of README.md and docs/*.md is
executed, so an example that stops working fails the suite. The rules are written for doc authors in
docs/README.md ("Docs that run"); in short:

- A block runs in a fresh temp folder that looks like the top of a checkout (`bin/` and `bench/` link
  to the checkout's), with `continuityseq-stream` on PATH (this checkout's, run by this Python),
  HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1, one shared demo-model cache, and a time limit. Shell blocks run
  under `bash -e -o pipefail`: a failing command fails the block. A block must leave no process behind.
- The well-known ports of the examples (1935 RTMP, 5555/5556 ZeroMQ, 5557 control) are replaced by free
  ports, the same within one session, so runs side by side do not collide.
- An HTML comment on the line before a block, `<!-- doc: a; b: value -->`, says what else it needs:
    skip: WHY        not run (only for what cannot run here: installers, hour-long jobs)
    continue         same folder as the block before (a reader's shell that goes on); a Python block
                     also runs the Python block before it first (its variables exist)
    nginx            nginx-rtmp runs beside the block, from the config in docs/streaming.md
    display          an X display (Xvfb) for windows: DISPLAY is set
    beside: COMMAND  a shell command running in the background during the block (e.g. a stream for a
                     subscriber example), stopped with SIGINT afterwards
    real-model       the block names the real checkpoint: REAL_MODEL below replaces it with the offline
                     random-weight model and small sizes (it must replace at least the model name)
    timeout: S       the block's time limit (default DEFAULT_TIMEOUT seconds)
- A block that is not `real-model` may not name a model that needs the network.

The parser and the rules are tested quickly here; the blocks themselves run in the `slow` tests
`test_doc_session[...]`, one per session (a block and the `continue` blocks after it), JOBS sessions at
a time (2; CONTINUITYSEQ_DOCS_JOBS=1 for one at a time).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = ("bash", "sh", "shell", "python")
DIRECTIVES = ("skip", "continue", "nginx", "display", "beside", "real-model", "timeout")
DEFAULT_TIMEOUT = 150.0
#: ports the examples use -> replaced by free ports in a session
PORTS = (1935, 5555, 5556, 5557)
#: what a `real-model` block names -> what it runs here (exact text, in this order)
REAL_MODEL = (
    ("b-f/ContinuitySeq-A", "demo-random"),
    ("stabilityai/stable-diffusion-2-1", "demo"),
    ("stabilityai/sd-x2-latent-upscaler", "demo"),
    ("--width 576", "--width 64"), ("--height 320", "--height 64"),
    ("-WI 576", "-WI 64"), ("-HI 320", "-HI 64"),
    ("--num-frames 16", "--num-frames 4"), ("-T 16", "-T 4"),
    ("height=320", "height=64"), ("width=576", "width=64"), ("num_frames=16", "num_frames=4"),
    ('device="cuda"', 'device="cpu"'), ("torch.float16", "torch.float32"),
)
#: model names that need the network; only `real-model` blocks may name them
NETWORK_MODELS = ("b-f/ContinuitySeq-A", "stabilityai/")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc:(.*?)-->\s*$")
_PORT = re.compile(r"(?<=:)(" + "|".join(map(str, PORTS)) + r")\b")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file, with the `<!-- doc: -->` directives before it."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: dict = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


class DocError(ValueError):
    """A Markdown file breaks the doc-block rules (unknown directive, unclosed fence...)."""


#: directives whose value is free text: they take the rest of the comment, `;` included
_FREE_TEXT = ("skip", "beside")


def parse_directives(text: str, where: str) -> dict:
    """`a; b: value` -> {"a": "", "b": "value"}; unknown names raise DocError."""
    out, parts = {}, text.split(";")
    while parts:
        name, _, value = parts.pop(0).partition(":")
        name, value = name.strip(), value.strip()
        if not name:
            continue
        if name in _FREE_TEXT:
            value, parts = ";".join([value, *parts]).strip(), []
        if name not in DIRECTIVES:
            raise DocError(f"{where}: unknown doc directive {name!r}; known: {', '.join(DIRECTIVES)}")
        if name in ("skip", "beside", "timeout") and not value:
            raise DocError(f"{where}: doc directive {name!r} needs a value ('{name}: ...')")
        out[name] = value
    return out


def parse_blocks(text: str, path: Path) -> list[Block]:
    """Every fenced block of `text`, in order. A `<!-- doc: ... -->` line belongs to the block whose
    fence follows it (blank lines between are allowed); a directive before anything else is an error."""
    blocks, pending, lines, i = [], None, text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        fence = _FENCE.match(line)
        if directive:
            pending = (i + 1, directive.group(1))
        elif fence:
            indent, marker, lang = fence.groups()
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip().startswith(marker) and not lines[j].strip()[len(marker):].strip()), None)
            if end is None:
                raise DocError(f"{path}:{i + 1}: code fence {marker} is never closed")
            body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1:end]]
            where = f"{path}:{i + 1}"
            directives = parse_directives(pending[1], where) if pending else {}
            blocks.append(Block(path, i + 1, lang.lower(), "\n".join(body) + "\n", directives))
            pending, i = None, end
        elif line.strip() and pending:
            raise DocError(f"{path}:{pending[0]}: a doc directive must come right before a code block")
        i += 1
    if pending:
        raise DocError(f"{path}:{pending[0]}: a doc directive must come right before a code block")
    return blocks


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def runnable_blocks(paths=None) -> list[Block]:
    return [b for p in (paths or doc_files()) for b in parse_blocks(p.read_text(), p) if b.runs]


def sessions(blocks: list[Block]) -> list[list[Block]]:
    """Runnable blocks grouped: a `continue` block joins the session of the block before it (same file)."""
    out: list[list[Block]] = []
    for b in blocks:
        if "continue" in b.directives:
            if not out or out[-1][-1].path != b.path:
                raise DocError(f"{b.where}: 'continue' needs a runnable block before it in the same file")
            out[-1].append(b)
        else:
            out.append([b])
    return out


def substitute_real_model(code: str, where: str) -> str:
    """The REAL_MODEL replacements; DocError when the block names no real model at all."""
    if not any(old in code for old, _ in REAL_MODEL[:3]):
        raise DocError(f"{where}: marked real-model but names none of {[old for old, _ in REAL_MODEL[:3]]}")
    for old, new in REAL_MODEL:
        code = code.replace(old, new)
    return code


def substitute_ports(code: str, ports: dict) -> str:
    """`:1935`, `:5555`, ... -> `:<free port>` (a port after a colon: URLs and host:port)."""
    return _PORT.sub(lambda m: str(ports[int(m.group(1))]), code)


def without_comments(code: str) -> str:
    """`code` without `#` comments (a `#` at a line's start or after a blank; good enough for the rules)."""
    return re.sub(r"(^|\s)#.*", "", code, flags=re.M)


def check_block(block: Block) -> None:
    """The static rule: only real-model blocks may name a model that needs the network (in code;
    a comment may point at the real model)."""
    if "real-model" not in block.directives and "skip" not in block.directives:
        named = [m for m in NETWORK_MODELS if m in without_comments(block.code)]
        if named:
            raise DocError(f"{block.where}: names {named} (needs the network): mark the block "
                           "<!-- doc: real-model --> or use --model demo / demo-random")


def nginx_config_from_docs() -> str:
    """The nginx config that docs/streaming.md writes (its `cat > rtmp.conf <<'EOF'` block)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import servers

    return servers.docs_nginx_config()


# -- quick checks of the docs and the rules (no process) ---------------------------------------------
def test_every_doc_file_parses_and_follows_the_rules():
    blocks = runnable_blocks()
    assert len(blocks) >= 20, f"only {len(blocks)} runnable blocks in README.md and docs/"
    for b in blocks:
        check_block(b)
        if "real-model" in b.directives:
            substitute_real_model(b.code, b.where)
    sessions(blocks)


def test_parser_reads_fences_languages_and_directives(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("intro\n\n<!-- doc: skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
                  "```text\nnot run\n```\n\n<!-- doc: continue; timeout: 30 -->\n\n```python\nprint(1)\n```\n"
                  "- list\n  ```sh\n  echo indented\n  ```\n")
    blocks = parse_blocks(md.read_text(), md)
    assert [(b.line, b.lang, b.runs) for b in blocks] == [(4, "bash", True), (8, "text", False), (14, "python", True),
                                                          (18, "sh", True)]
    assert blocks[0].directives == {"skip": "needs a GPU"}
    assert parse_directives("display; skip: a; b", "x") == {"display": "", "skip": "a; b"}
    assert blocks[2].directives == {"continue": "", "timeout": "30"} and blocks[2].code == "print(1)\n"
    assert blocks[3].code == "echo indented\n"
    assert [[b.line for b in s] for s in sessions([b for b in blocks if b.runs])] == [[4, 14], [18]]


@pytest.mark.parametrize("text, message", [
    ("<!-- doc: nginxx -->\n```bash\necho\n```\n", "unknown doc directive 'nginxx'"),
    ("<!-- doc: skip -->\n```bash\necho\n```\n", "needs a value"),
    ("<!-- doc: nginx -->\nsome text\n```bash\necho\n```\n", "right before a code block"),
    ("```bash\necho\n", "never closed"),
])
def test_parser_refuses_broken_directives(tmp_path, text, message):
    with pytest.raises(DocError, match=message):
        parse_blocks(text, tmp_path / "x.md")


def test_real_model_substitution_and_network_rule(tmp_path):
    code = ("bin/inference.py --model b-f/ContinuitySeq-A --model-2d stabilityai/stable-diffusion-2-1 "
            "--num-frames 16 --width 576 --height 320 --times 1 --sdp\n")
    assert substitute_real_model(code, "x") == ("bin/inference.py --model demo-random --model-2d demo "
                                                "--num-frames 4 --width 64 --height 64 --times 1 --sdp\n")
    with pytest.raises(DocError, match="names none of"):
        substitute_real_model("continuityseq-stream --model demo\n", "x")
    with pytest.raises(DocError, match="mark the block"):
        check_block(Block(tmp_path / "x.md", 1, "bash", "continuityseq-stream -m b-f/ContinuitySeq-A\n"))
    check_block(Block(tmp_path / "x.md", 1, "python", 'p = load("demo")  # or "b-f/ContinuitySeq-A" on a GPU\n'))


def test_ports_are_replaced_only_after_a_colon():
    ports = {1935: 40001, 5555: 40002, 5556: 40003, 5557: 40004}
    code = "rtmp://127.0.0.1:1935/live/x zmq+pub://127.0.0.1:5555 --count 5555 tcp://127.0.0.1:55570\n"
    assert substitute_ports(code, ports) == "rtmp://127.0.0.1:40001/live/x zmq+pub://127.0.0.1:40002 --count 5555 tcp://127.0.0.1:55570\n"


def test_the_tests_nginx_is_the_docs_nginx(tmp_path):
    """tests/servers.py runs the config that docs/streaming.md shows, with only the port changed."""
    sys.path.insert(0, str(Path(__file__).parent))
    import servers

    doc = nginx_config_from_docs()
    directives = [ln.strip() for ln in doc.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert directives[0].startswith("load_module ") and "events { worker_connections 64; }" in directives
    assert "listen 127.0.0.1:1935;" in directives and "daemon off;" in directives
    used = servers.nginx_config(40123)
    assert used == doc.replace("127.0.0.1:1935", "127.0.0.1:40123")


#: pages other branches are adding right now (linked already; they exist once those are merged)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set:
    """GitHub's anchors of a Markdown file's headings (lowercase, punctuation dropped, spaces -> -)."""
    anchors = set()
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_between_the_docs_point_at_files_and_headings_that_exist():
    broken = []
    for page in doc_files():
        for target in _LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_stays_a_front_door():
    """The README holds the two commands, the quick tier and links; the details live in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 12_500, f"README.md is {len(text.encode())} bytes; move details into docs/"
    for must in ("bash bin/demo", "bash bin/test", '-m "not slow"', ".venv/bin/activate"):
        assert must in text, must


# -- the blocks themselves ---------------------------------------------------------------------------
def _session_id(session: list[Block]) -> str:
    return session[0].where


def _all_sessions() -> list:
    """The sessions of every doc file; none when a file breaks the rules (the quick test above then
    says which file and line)."""
    try:
        return sessions(runnable_blocks())
    except DocError:
        return []


SESSIONS = _all_sessions()


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    """The environment every block runs in: offline, one thread, one demo-model cache (built once),
    and `continuityseq-stream` on PATH as this checkout's bin/continuityseq-stream run by this Python."""
    base = tmp_path_factory.mktemp("docs-env")
    shims = base / "bin"
    shims.mkdir()
    shim = shims / "continuityseq-stream"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'bin' / 'continuityseq-stream'))} \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ, PATH=os.pathsep.join([str(shims), os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    subprocess.run([sys.executable, "-c", "from continuityseq_stream.demo import tiny; tiny.demo_model_path(); "
                    "tiny.demo_2d_model_path(); tiny.demo_upscaler_path()"], env=env, check=True, timeout=300,
                   capture_output=True)
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(pgid: int, grace: float = 0.0) -> bool:
    """SIGKILL a process group we started, after up to `grace` seconds for it to end by itself (e.g.
    multiprocessing's resource tracker, which exits just after the run); True when something was
    still alive in it then."""
    deadline = time.monotonic() + grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _command(block: Block, code: str, work: Path, previous_python: str) -> list[str]:
    """The command that runs `code` (written beside the work folder, not in it)."""
    script = work.parent / f"block-{block.line}.{'py' if block.lang == 'python' else 'sh'}"
    if block.lang == "python":
        script.write_text(previous_python + code)
        return [sys.executable, str(script)]
    script.write_text(code)
    return ["bash", "-e", "-o", "pipefail", str(script)]


class _Beside:
    """A `beside:` command in its own process group, stopped with SIGINT (then SIGKILL) afterwards."""

    def __init__(self, command: str, cwd: Path, env: dict) -> None:
        self.log = open(cwd.parent / "beside.log", "w+")
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> str:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.proc.pid)
        self.proc.wait(10)
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def _run_block(block: Block, code: str, work: Path, env: dict, previous_python: str) -> str:
    limit = float(block.directives.get("timeout") or DEFAULT_TIMEOUT)
    t0 = time.monotonic()
    proc = subprocess.Popen(_command(block, code, work, previous_python), cwd=work, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"{block.where}: still running after {limit:g} s\n--- output ---\n{out.decode(errors='replace')[-3000:]}")
    left = _kill_group(proc.pid, grace=10.0)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{block.where}: exit status {proc.returncode}\n--- block ---\n{code}--- output ---\n{text[-4000:]}"
    assert not left, f"{block.where}: left processes running after it ended (wait for what you start)\n{text[-2000:]}"
    return f"{block.where}: ok in {time.monotonic() - t0:.1f} s"


def run_session(session: list[Block], env: dict, tmp: Path) -> str:
    """Run one session's blocks in order, in one fresh folder, with what their directives ask for;
    returns a line per block (its time). Raises (pytest.fail / AssertionError) on the first failure."""
    sys.path.insert(0, str(Path(__file__).parent))
    import servers

    work = tmp / "work"
    work.mkdir()
    for name in ("bin", "bench"):
        (work / name).symlink_to(ROOT / name)
    ports = {p: servers.free_port() for p in PORTS}
    env, started, log = dict(env), [], []
    try:
        if any("nginx" in b.directives for b in session):
            started.append(servers.NginxRtmp(tmp / "nginx", port=ports[1935]).start())
        if any("display" in b.directives for b in session):
            started.append(servers.Xvfb(640, 480).start())
            env = started[-1].env(**{k: v for k, v in env.items() if k != "DISPLAY"})
        previous_python = ""
        for block in session:
            if "skip" in block.directives:
                log.append(f"{block.where}: skipped ({block.directives['skip']})")
                continue
            check_block(block)
            code = block.code
            if "real-model" in block.directives:
                code = substitute_real_model(code, block.where)
            code = substitute_ports(code, ports)
            beside = None
            if "beside" in block.directives:
                beside = _Beside(substitute_ports(block.directives["beside"], ports), work, env)
            try:
                log.append(_run_block(block, code, work, env, previous_python if "continue" in block.directives else ""))
            finally:
                beside_log = beside.stop() if beside else ""
            if beside is not None:
                assert beside.proc.returncode in (0, -signal.SIGINT, 130), \
                    f"{block.where}: the beside command failed ({beside.proc.returncode}):\n{beside_log[-3000:]}"
            if block.lang == "python":
                previous_python += code
    finally:
        for server in reversed(started):
            server.stop()
    return "\n".join(log)


#: sessions run this many at a time (most of a block's time is a run starting up: imports in two
#: processes, one thread each); CONTINUITYSEQ_DOCS_JOBS=1 runs them one by one
JOBS = max(1, int(os.environ.get("CONTINUITYSEQ_DOCS_JOBS", "2")))


@pytest.fixture(scope="module")
def doc_runs(request, doc_env, tmp_path_factory):
    """Starts every selected session at once on a pool of JOBS threads; each test waits for its own.
    The pool's threads live until every session is done, so the servers they start (which die with
    the thread that started them) live as long as their session."""
    from concurrent.futures import ThreadPoolExecutor

    selected = [item.callspec.params["session"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_doc_session"]
    pool = ThreadPoolExecutor(max_workers=JOBS, thread_name_prefix="doc-session")
    runs = {}
    for i, session in enumerate(selected):
        if not all("skip" in b.directives for b in session):
            runs[_session_id(session)] = pool.submit(run_session, session, doc_env, tmp_path_factory.mktemp(f"doc{i}-"))
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("session", SESSIONS, ids=_session_id)
def test_doc_session(session, doc_runs):
    """The blocks of one session ran (see run_session) and every one of them succeeded."""
    if all("skip" in b.directives for b in session):
        pytest.skip(f"{session[0].where}: {session[0].directives['skip']}")
    print(doc_runs[_session_id(session)].result())
