"""Generate gRPC stubs from `protos/` (the one place stubs come from).

Usage: gen_stubs.py [LANG] [--out DIR]

`python` (the default) writes the committed stubs into `generated/`: message
and service modules plus `.pyi` type stubs, importable as `jobmesh.v1`.
Never edit generated files by hand; change the protos and run this again.

Other languages go to `generated/LANG/` (not committed; replaced on each run):
`cpp`, `php`, `ruby` (Debian: protobuf-compiler protobuf-compiler-grpc), `csharp`,
`objc`, `java` (their gRPC plugin on PATH), `go` (protoc-gen-go, protoc-gen-go-grpc)
and `node` (TypeScript types from @grpc/proto-loader; Node.js itself loads the .proto
files at run time).
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
    """All .proto files (public jobmesh.v1 and peer jobmesh.peer.v1), sorted for stable output."""
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


# protoc's own generator flag and the gRPC plugin that adds the services, per language.
# Debian's protobuf-compiler-grpc has the cpp, php, python and ruby plugins.
_PROTOC_LANGUAGES = {
    "cpp": ("cpp", "grpc_cpp_plugin"),
    "csharp": ("csharp", "grpc_csharp_plugin"),
    "objc": ("objc", "grpc_objective_c_plugin"),
    "php": ("php", "grpc_php_plugin"),
    "ruby": ("ruby", "grpc_ruby_plugin"),
    "java": ("java", "protoc-gen-grpc-java"),
}
_INSTALL_HINT = "Debian: apt-get install protobuf-compiler protobuf-compiler-grpc"
NODE_TYPES_TOOL = "proto-loader-gen-types"
NODE_EXAMPLE = ROOT / "examples" / "node"


def _protoc() -> str:
    found = shutil.which("protoc")
    if found is None:
        raise SystemExit(f"gen-stubs: protoc not found on PATH ({_INSTALL_HINT})")
    return found


def _relative_protos() -> list[str]:
    return [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]


def generate_with_protoc(lang: str, out: Path) -> None:
    """Messages with protoc's generator for `lang`, services with that language's gRPC plugin."""
    generator, plugin_name = _PROTOC_LANGUAGES[lang]
    plugin = shutil.which(plugin_name)
    if plugin is None:
        raise SystemExit(f"gen-stubs: {lang} needs the gRPC plugin {plugin_name} on PATH ({_INSTALL_HINT})")
    protoc = _protoc()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            protoc,
            f"-I{PROTO_ROOT}",
            f"--{generator}_out={out}",
            f"--grpc_out={out}",
            f"--plugin=protoc-gen-grpc={plugin}",
            *_relative_protos(),
        ],
        check=True,
    )


def generate_go(out: Path) -> None:
    """Go messages and services with protoc-gen-go and protoc-gen-go-grpc (go install ...)."""
    for tool in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"gen-stubs: go needs {tool} on PATH (go install google.golang.org/protobuf/cmd/protoc-gen-go@latest "
                "google.golang.org/grpc/cmd/protoc-gen-go-grpc@latest)"
            )
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            _protoc(),
            f"-I{PROTO_ROOT}",
            f"--go_out={out}",
            "--go_opt=paths=source_relative",
            f"--go-grpc_out={out}",
            "--go-grpc_opt=paths=source_relative",
            *_relative_protos(),
        ],
        check=True,
    )


def generate_node(out: Path) -> None:
    """TypeScript types for the Node.js clients, with @grpc/proto-loader's generator.

    Node.js code needs no generated code: @grpc/grpc-js with @grpc/proto-loader loads the
    .proto files at run time (see examples/node). These types are for TypeScript users. (protoc
    has no JavaScript generator since protobuf 3.21, and Debian ships no grpc_node_plugin.)
    """
    local = NODE_EXAMPLE / "node_modules" / ".bin" / NODE_TYPES_TOOL
    tool = shutil.which(NODE_TYPES_TOOL) or (str(local) if local.exists() else None)
    if tool is None:
        raise SystemExit(
            f"gen-stubs: node needs {NODE_TYPES_TOOL} from @grpc/proto-loader: "
            f"run `npm install` in {NODE_EXAMPLE.relative_to(ROOT)} (needs Node.js and npm)"
        )
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            tool,
            *_relative_protos(),  # first: --includeDirs takes every value after it
            "--keepCase",
            "--longs=Number",
            "--enums=String",
            "--defaults",
            "--oneofs",
            "--includeComments",
            "--grpcLib=@grpc/grpc-js",
            f"--outDir={out}",
            f"--includeDirs={PROTO_ROOT}",
        ],
        check=True,
    )


LANGUAGES = ("python", "node", "go", *_PROTOC_LANGUAGES)


def generate(lang: str, out: Path | None = None) -> Path:
    """Generate stubs for `lang` into `out` (default: generated/, or a fresh generated/LANG/)."""
    if lang == "python":
        target = out or PYTHON_OUT
        generate_python(target)
        return target
    if lang not in LANGUAGES:
        raise SystemExit(f"gen-stubs: unknown language {lang!r}; use one of {', '.join(LANGUAGES)}")
    target = out or PYTHON_OUT / lang
    if out is None and target.exists():
        shutil.rmtree(target)  # generated/LANG/ holds nothing else: no stale files survive
    if lang == "node":
        generate_node(target)
    elif lang == "go":
        generate_go(target)
    else:
        generate_with_protoc(lang, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("lang", nargs="?", default="python", help=f"one of {', '.join(LANGUAGES)}")
    parser.add_argument("--out", type=Path, help="output directory (default: generated/ or generated/LANG/)")
    args = parser.parse_args(argv)
    try:
        target = generate(args.lang, args.out)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"gen-stubs: {args.lang}: {Path(e.cmd[0]).name} failed (exit {e.returncode})") from e
    print(f"gen-stubs: {args.lang} stubs in {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
