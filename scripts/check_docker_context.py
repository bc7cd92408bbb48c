#!/usr/bin/env python3
"""Checks that the Docker build context (.dockerignore, an allowlist) holds what `cargo build`
reads, without a Docker engine: every file the workspace's manifests declare (benches, examples,
build scripts) and every file the code embeds at compile time (`include_str!`, `include_bytes!`,
`sqlx::migrate!`, sqlx's `query_file!` family). A file left out of the allowlist fails the image build only inside Docker,
which CI cannot run; this finds it here.

The context is materialised the way the allowlist reads: `*` excludes everything, and each
`!path` (a file, or a directory when it ends in `/`) brings that path back. Other pattern forms
are refused, so that a new kind of line cannot be silently misread.

Usage: check_docker_context.py <output dir>; exit 0 with a summary line, or 1 with each problem.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBED = re.compile(
    r'(include_str|include_bytes)!\(\s*"([^"]+)"\s*\)'
    r'|sqlx::(?:migrate|query_file|query_file_scalar)(?:_unchecked)?!\(\s*"([^"]+)"'
    r'|sqlx::query_file_as(?:_unchecked)?!\(\s*[\w:]+\s*,\s*"([^"]+)"'
)


def allowlist() -> list[str]:
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    if not lines or lines[0] != "*":
        sys.exit(".dockerignore must start with `*` (an allowlist); this check reads no other form")
    entries = []
    for line in lines[1:]:
        if not line.startswith("!") or any(c in line for c in "*?["):
            sys.exit(f".dockerignore: {line!r} is not a plain `!path` entry, which this check cannot read")
        entries.append(line[1:])
    return entries


def materialise(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for entry in allowlist():
        source = ROOT / entry.rstrip("/")
        target = out / entry.rstrip("/")
        if not source.exists():
            continue  # an optional path (docker skips a missing one too)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "docker-context"
    materialise(out)
    problems = []

    # `cargo metadata --no-deps` loads every workspace manifest the way `cargo build` does, and
    # lists each target with the file it is built from.
    metadata = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
        cwd=out, capture_output=True, text=True,
    )
    if metadata.returncode != 0:
        problems.append(f"cargo cannot load the workspace from the context:\n{metadata.stderr.strip()}")
    else:
        packages = json.loads(metadata.stdout)["packages"]
        for package in packages:
            for target in package["targets"]:
                # Every declared target, benches and examples too: `cargo build --bin
                # token-vault` refuses a workspace whose manifest names a target file that is not
                # there ("can't find `auth` bench"), though it builds none of them. (`cargo
                # metadata` itself does not check; it lists the declared path.)
                if not Path(target["src_path"]).exists():
                    problems.append(f"{package['name']}: {' '.join(target['kind'])} target {target['name']} ({target['src_path']}) is missing")

    embedded = 0
    for source in sorted((ROOT / "src").rglob("*.rs")):
        for match in EMBED.finditer(source.read_text()):
            relative = match.group(2) or match.group(3) or match.group(4)
            # include_str! is relative to the file; sqlx's macros to the manifest directory.
            base = source.parent if match.group(2) else ROOT
            path = (base / relative).resolve().relative_to(ROOT)
            embedded += 1
            if not (out / path).exists():
                problems.append(f"{source.relative_to(ROOT)} embeds {path}, which the build context leaves out")

    for problem in problems:
        print(f"docker context: {problem}")
    if problems:
        return 1
    print(f"docker context: the workspace loads and all {embedded} embedded paths are present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
