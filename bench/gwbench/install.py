"""What the bench needs from outside the project, installed on first use.

wrk and nginx come from Debian (apt-get, as root); py-spy goes into the project's
`.venv` when profiling is asked for; the LiteLLM proxy gets a virtualenv of its own
outside the repository (`$BENCH_LITELLM_VENV`, default `~/.cache/llmgw/litellm-venv`),
pinned to the version the issue measured when PyPI still has it, and reused afterwards.
`bench/run routing` installs vLLM's router (`vllm-router`, a Rust binary in a wheel) the
same way, pinned, into `$BENCH_VLLM_ROUTER_VENV` (default
`~/.cache/llmgw/vllm-router-venv`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

LITELLM_VERSION = "1.108.7"  # the version the figures were taken with
LITELLM_VENV = Path(os.environ.get("BENCH_LITELLM_VENV", Path.home() / ".cache/llmgw/litellm-venv"))
VLLM_ROUTER_VERSION = "0.1.17"  # the peer of bench/run routing; its CLI was read at this version
VLLM_ROUTER_VENV = Path(
    os.environ.get("BENCH_VLLM_ROUTER_VENV", Path.home() / ".cache/llmgw/vllm-router-venv")
)
# Debian package -> the program it brings.
SYSTEM_PACKAGES = {"wrk": "wrk", "nginx-light": "nginx"}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def find_program(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def system_packages() -> dict[str, str]:
    """Path of each program, installing the Debian packages that are missing."""
    missing = [pkg for pkg, prog in SYSTEM_PACKAGES.items() if find_program(prog) is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(
                f"bench: missing {' '.join(missing)}; install them with:"
                f" sudo apt-get install -y {' '.join(missing)}"
            )
        say(f"installing {' '.join(missing)} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # Other jobs may hold the dpkg lock for a while: wait for it rather than fail.
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", *missing]
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            update = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"]
            subprocess.run(update, env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    found = {prog: find_program(prog) for prog in SYSTEM_PACKAGES.values()}
    absent = [prog for prog, path in found.items() if path is None]
    if absent:
        raise SystemExit(f"bench: {' '.join(absent)} still missing after apt-get")
    return {prog: str(path) for prog, path in found.items()}


def py_spy() -> str:
    """py-spy in the project's virtualenv (beside this interpreter)."""
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        say("installing py-spy into .venv ...")
        pip = [sys.executable, "-m", "pip", "install", "-q", "py-spy"]
        done = subprocess.run(pip, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench: installing py-spy failed:\n{done.stderr[-3000:]}")
    return str(path)


def litellm() -> tuple[Path, str]:
    """The `litellm` proxy executable and its version, installing it on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if not exe.exists():
        say(f"installing the LiteLLM proxy into {LITELLM_VENV} (a few minutes, once) ...")
        LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
        version = _newest_or_pinned(python)
        pip = [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"]
        done = subprocess.run(pip, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(LITELLM_VENV, ignore_errors=True)  # never reuse half an install
            raise SystemExit(f"bench: installing LiteLLM failed:\n{done.stderr[-3000:]}")
    return exe, _installed_version(python)


def _newest_or_pinned(python: Path) -> str:
    """LITELLM_VERSION when PyPI has it, else the newest release."""
    out = subprocess.run(
        [str(python), "-m", "pip", "index", "versions", "litellm"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        if line.startswith("Available versions:"):
            versions = [v.strip() for v in line.partition(":")[2].split(",")]
            if LITELLM_VERSION in versions:
                return LITELLM_VERSION
            say(f"LiteLLM {LITELLM_VERSION} is not on PyPI; using {versions[0]}")
            return versions[0]
    return LITELLM_VERSION  # let pip say what is wrong


def _installed_version(python: Path) -> str:
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def vllm_router() -> tuple[Path, str]:
    """The `vllm-router` executable and its version, installing it on first use (and again
    when the virtualenv holds another version)."""
    exe = VLLM_ROUTER_VENV / "bin" / "vllm-router"
    python = VLLM_ROUTER_VENV / "bin" / "python"
    if exe.exists() and _package_version(python, "vllm-router") == VLLM_ROUTER_VERSION:
        return exe, VLLM_ROUTER_VERSION
    say(f"installing vllm-router {VLLM_ROUTER_VERSION} into {VLLM_ROUTER_VENV} (once) ...")
    VLLM_ROUTER_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VLLM_ROUTER_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", f"vllm-router=={VLLM_ROUTER_VERSION}"]
    done = subprocess.run(pip, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not exe.exists():
        shutil.rmtree(VLLM_ROUTER_VENV, ignore_errors=True)  # never reuse half an install
        raise SystemExit(f"bench: installing vllm-router failed:\n{done.stderr[-3000:]}")
    return exe, _package_version(python, "vllm-router") or "?"


def _package_version(python: Path, name: str) -> str | None:
    if not python.exists():
        return None
    probe = f"import importlib.metadata as m; print(m.version({name!r}))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None
