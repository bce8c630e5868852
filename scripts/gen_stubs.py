"""Generate gRPC stubs from `protos/` (the one place stubs come from).

Usage: gen_stubs.py [LANG] [--out DIR]

`python` (the default) writes the committed stubs into `generated/`: message
and service modules plus `.pyi` type stubs, importable as `jobmesh.v1`.
Never edit generated files by hand; change the protos and run this again.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PYTHON_OUT = ROOT / "generated"


def proto_files() -> list[Path]:
    """All .proto files of the public contract, sorted for stable output."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed in this interpreter's environment."""
    found = shutil.which(name, path=sysconfig.get_path("scripts"))
    if found is None:
        raise SystemExit(f"gen-stubs: {name} not found; install the dev extra (pip install -e '.[dev]')")
    return found


def generate_python(out: Path) -> None:
    """Write Python stubs (+ .pyi) for every proto into `out`."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("gen-stubs: protoc failed")
    # Packages need __init__.py so `import jobmesh.v1.jobs_pb2` works.
    for proto in proto_files():
        package_dir = out / proto.parent.relative_to(PROTO_ROOT)
        while package_dir != out:
            (package_dir / "__init__.py").touch()
            package_dir = package_dir.parent
    (out / "jobmesh" / "py.typed").touch()


def generate_other(lang: str, out: Path) -> None:
    """Write stubs for another language with the system protoc and its gRPC plugin."""
    plugins = {
        "cpp": "grpc_cpp_plugin",
        "node": "grpc_node_plugin",
        "csharp": "grpc_csharp_plugin",
        "objc": "grpc_objective_c_plugin",
        "php": "grpc_php_plugin",
        "ruby": "grpc_ruby_plugin",
    }
    protoc_out = {"node": "js", "objc": "objc"}.get(lang, lang)
    protoc_bin = shutil.which("protoc")
    plugin = shutil.which(plugins.get(lang, ""))
    if protoc_bin is None or plugin is None:
        raise SystemExit(
            f"gen-stubs: {lang} needs protoc and {plugins.get(lang, 'a gRPC plugin')} on PATH "
            "(Debian: apt-get install protobuf-compiler protobuf-compiler-grpc)"
        )
    out.mkdir(parents=True, exist_ok=True)
    extra = (
        ["--js_out=import_style=commonjs,binary:" + str(out)]
        if lang == "node"
        else [f"--{protoc_out}_out={out}"]
    )
    subprocess.run(
        [
            protoc_bin,
            f"-I{PROTO_ROOT}",
            *extra,
            f"--grpc_out={out}",
            f"--plugin=protoc-gen-grpc={plugin}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
        ],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lang", nargs="?", default="python", help="python (default), cpp, node, ...")
    parser.add_argument("--out", type=Path, help="output directory (default: generated/ or generated/LANG/)")
    args = parser.parse_args(argv)
    if args.lang == "python":
        generate_python(args.out or PYTHON_OUT)
    else:
        generate_other(args.lang, args.out or PYTHON_OUT / args.lang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
