"""Builds a job environment inside a container of the job's own image: pip installs the job's requirements
under ENV_DIR/prefix with the image's interpreter, reaching packages only through the bridge to the
agent's index proxy (or from nothing at all, with --no-index, when the stack has no index). Writes
ENV_DIR/environment.json: where the packages landed and what was installed.

Usage: build_env.py REQUIREMENTS ENV_DIR [INDEX_URL]
       (CRUCIBLE_INDEX_SOCKET names the proxy's socket when INDEX_URL is given)
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import threading

import index_bridge

BRIDGE_PORT = 3128


def site_packages(prefix):
    """Where pip put pure and platform packages under `prefix` (Debian's scheme may say dist-packages)."""
    found = []
    for root, dirs, _ in os.walk(prefix):
        for name in list(dirs):
            if name in ("site-packages", "dist-packages"):
                found.append(os.path.join(root, name))
                dirs.remove(name)
    return sorted(found)


def main():
    requirements, env_dir = sys.argv[1], sys.argv[2]
    index_url = sys.argv[3] if len(sys.argv) > 3 else None
    prefix = os.path.join(env_dir, "prefix")
    command = [
        sys.executable, "-m", "pip", "install",
        "--prefix", prefix,
        "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location",
        "--no-input", "--progress-bar", "off", "--root-user-action", "ignore",
        "-r", requirements,
    ]
    if index_url:
        socket_path = os.environ["CRUCIBLE_INDEX_SOCKET"]
        ready = threading.Event()
        threading.Thread(target=index_bridge.listen, args=(BRIDGE_PORT, socket_path, ready), daemon=True).start()
        ready.wait(10)
        command += ["--index-url", index_url, "--proxy", f"http://127.0.0.1:{BRIDGE_PORT}"]
    else:
        command += ["--no-index"]
    print("$ pip install -r requirements.txt" + (" (from the stack's package index)" if index_url else " --no-index"), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    paths = site_packages(prefix)
    installed = sorted(
        ({"name": d.metadata["Name"], "version": d.version} for d in importlib.metadata.distributions(path=paths)),
        key=lambda p: p["name"].lower(),
    )
    with open(os.path.join(env_dir, "environment.json"), "w", encoding="utf-8") as out:
        json.dump(
            {
                "sitePackages": [os.path.relpath(p, env_dir) for p in paths],
                "python": sysconfig.get_python_version(),
                "packages": installed,
            },
            out,
        )
    names = ", ".join(f"{p['name']}=={p['version']}" for p in installed) or "nothing (the image has it all)"
    print(f"installed: {names}", flush=True)


if __name__ == "__main__":
    main()
