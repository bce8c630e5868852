"""Generate gRPC stubs from `protos/` (the one place stubs come from).

Usage: gen_stubs.py [LANG] [--out DIR]

`python` (the default) writes the committed stubs into `generated/`: message
and service modules plus `.pyi` type stubs, importable as `jobmesh.v1`.
Never edit generated files by hand; change the protos and run this again.

Other languages go to `generated/LANG/` (not committed; replaced on each run):
`cpp`, `php`, `ruby` (Debian: protobuf-compiler protobuf-compiler-grpc libprotobuf-dev),
`java` (Debian: protobuf-compiler-grpc-java-plugin), `csharp` and `objc` (their gRPC plugin on
PATH; Debian packages neither), `go` (Debian: protoc-gen-go protoc-gen-go-grpc) and `node`
(TypeScript types from @grpc/proto-loader; Node.js itself loads the .proto files at run time).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ProtocLanguage:
    """How protoc makes one language's stubs: its own generator plus a gRPC plugin."""

    generator: str
    """protoc's built-in generator (`--GENERATOR_out`) for the messages."""
    plugins: tuple[str, ...]
    """Names of the gRPC plugin that adds the services, the first one found on PATH wins."""
    hint: str
    """Where that plugin comes from, for the message when none is found."""


# Debian's protobuf-compiler-grpc has the cpp, php, python and ruby plugins (`dpkg -L`); no
# Debian package has a C# or Objective-C one (`apt-cache search grpc`).
_GRPC_PLUGINS_HINT = "Debian: apt-get install protobuf-compiler-grpc"
_PROTOC_LANGUAGES = {
    "cpp": ProtocLanguage("cpp", ("grpc_cpp_plugin",), _GRPC_PLUGINS_HINT),
    "php": ProtocLanguage("php", ("grpc_php_plugin",), _GRPC_PLUGINS_HINT),
    "ruby": ProtocLanguage("ruby", ("grpc_ruby_plugin",), _GRPC_PLUGINS_HINT),
    "java": ProtocLanguage(
        "java",
        ("protoc-gen-grpc-java", "grpc_java_plugin"),  # grpc-java's release name, Debian's name
        "Debian: apt-get install protobuf-compiler-grpc-java-plugin",
    ),
    "csharp": ProtocLanguage(
        "csharp",
        ("grpc_csharp_plugin",),
        "Debian packages none; NuGet's Grpc.Tools has it in tools/linux_x64/",
    ),
    "objc": ProtocLanguage(
        "objc",
        ("grpc_objective_c_plugin",),
        "Debian packages none; build it from gRPC's sources (CMake target grpc_objective_c_plugin)",
    ),
}
_PROTOC_HINT = "Debian: apt-get install protobuf-compiler"
# protoc finds the well-known types (google/protobuf/*.proto) in the include directory beside it.
_WELL_KNOWN_HINT = "Debian: apt-get install libprotobuf-dev"
_GO_HINT = (
    "Debian: apt-get install protoc-gen-go protoc-gen-go-grpc; elsewhere: go install "
    "google.golang.org/protobuf/cmd/protoc-gen-go@latest google.golang.org/grpc/cmd/protoc-gen-go-grpc@latest"
)
# The Go module the stubs form: the prefix of every proto's go_package (see protos/).
GO_MODULE = "jobmesh.example/api"
NODE_TYPES_TOOL = "proto-loader-gen-types"
NODE_EXAMPLE = ROOT / "examples" / "node"
# The @grpc/proto-loader options the TypeScript types assume (examples/node/jobmesh.js uses them).
NODE_LOADER_OPTIONS = {
    "keepCase": "true",
    "longs": "Number",
    "enums": "String",
    "defaults": "true",
    "oneofs": "true",
}


def _protoc() -> list[str]:
    """protoc and an include flag for the well-known types, or a message naming what is missing."""
    found = shutil.which("protoc")
    if found is None:
        raise SystemExit(f"gen-stubs: protoc not found on PATH ({_PROTOC_HINT})")
    include = Path(found).resolve().parent.parent / "include"
    if not (include / "google" / "protobuf" / "timestamp.proto").is_file():
        raise SystemExit(
            f"gen-stubs: protoc has no google/protobuf/timestamp.proto in {include} ({_WELL_KNOWN_HINT})"
        )
    return [found, f"-I{PROTO_ROOT}", f"-I{include}"]


def _relative_protos() -> list[str]:
    return [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]


def generate_with_protoc(lang: str, out: Path) -> None:
    """Messages with protoc's generator for `lang`, services with that language's gRPC plugin."""
    language = _PROTOC_LANGUAGES[lang]
    plugin = next(filter(None, map(shutil.which, language.plugins)), None)
    if plugin is None:
        names = " or ".join(language.plugins)
        raise SystemExit(f"gen-stubs: {lang} needs the gRPC plugin {names} on PATH ({language.hint})")
    protoc = _protoc()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *protoc,
            f"--{language.generator}_out={out}",
            f"--grpc_out={out}",
            f"--plugin=protoc-gen-grpc={plugin}",
            *_relative_protos(),
        ],
        check=True,
    )


def generate_go(out: Path) -> None:
    """Go messages and services (protoc-gen-go, protoc-gen-go-grpc) as the module GO_MODULE.

    `out` becomes the module's root: `out/go.mod` names it, the package `jobmeshv1` is in
    `out/jobmesh/v1`. Its requirements are left to the user's `go mod tidy`.
    """
    for tool in ("protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"gen-stubs: go needs {tool} on PATH ({_GO_HINT})")
    protoc = _protoc()
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *protoc,
            f"--go_out={out}",
            f"--go_opt=module={GO_MODULE}",
            f"--go-grpc_out={out}",
            f"--go-grpc_opt=module={GO_MODULE}",
            *_relative_protos(),
        ],
        check=True,
    )
    (out / "go.mod").write_text(f"module {GO_MODULE}\n\ngo 1.19\n")


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
            *(f"--{name}={value}" for name, value in NODE_LOADER_OPTIONS.items()),
            "--includeComments",
            "--grpcLib=@grpc/grpc-js",
            f"--outDir={out}",
            f"--includeDirs={PROTO_ROOT}",
        ],
        check=True,
    )
    options = ", ".join(f"{name}: {value}" for name, value in NODE_LOADER_OPTIONS.items())
    (out / "loader-options.ts").write_text(
        "// The @grpc/proto-loader options these types assume: load the protos with\n"
        "// protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] }).\n"
        f"export const LOADER_OPTIONS = {{ {options} }} as const;\n"
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
