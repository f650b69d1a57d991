"""What a macOS library (Mach-O) needs from others and what it exports, read on any OS with LLVM's tools.

macOS links with a two-level namespace: each undefined symbol records the library it binds to, by that library's
install name, and dyld looks it up in that library only, following the library's re-exports (per symbol in its
exports trie, or a whole LC_REEXPORT_DYLIB). A symbol linked with `-undefined dynamic_lookup` names no library:
dyld looks it up in every image loaded so far ("dynamically looked up"). An install name is matched first against
the images already loaded, which is how a plugin that TensorFlow loads finds TensorFlow's own libraries.

tests/test_mac_install.py uses this to show, without a Mac, that tensorflow-metal's plugin finds every TensorFlow
symbol it needs in the TensorFlow it is installed with.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# nm -m: "(undefined) external _TF_NewStatus (from @rpath/_pywrap_tensorflow_internal.so)" or
# "(undefined) external _TF_GetStream (dynamically looked up)"; weak imports say "weak external".
UNDEFINED = re.compile(
    r"\s*\(undefined\) (?:weak )?external (?P<symbol>\S+)(?: \[[^\]]*\])*"
    r" \((?:from (?P<library>.+)|dynamically looked up)\)"
)
# objdump --exports-trie: "0x0001B81F8  _EagerTensor_clear [weak_def]", or a per-symbol re-export
# "[re-export] _TF_AllocateOutput (from libtensorflow_framework)" / "[re-export] _a [weak_def] (_b from libfoo)".
EXPORT = re.compile(
    r"(?:0x[0-9A-Fa-f]+  |\[re-export\] )(?P<symbol>\S+)(?: \[[^\]]*\])?"
    r"(?: \((?:(?P<target>\S+) )?from (?P<library>\S+)\))?"
)
LOAD_COMMAND = re.compile(r"\s*cmd (?P<cmd>LC_\w+)")
DYLIB_NAME = re.compile(r"\s*name (?P<name>.+) \(offset \d+\)")
LOADS = ("LC_LOAD_DYLIB", "LC_LOAD_WEAK_DYLIB", "LC_REEXPORT_DYLIB", "LC_LOAD_UPWARD_DYLIB")
SYSTEM = ("/usr/lib/", "/System/")  # macOS's own libraries: not in any wheel, so not checked here


@dataclass(frozen=True)
class Imports:
    bound: dict[str, str]  # symbol → install name of the library it is bound to
    looked_up: frozenset[str]  # symbols dyld looks up in every loaded image


@dataclass(frozen=True)
class ReExport:
    symbol: str  # the name in the library it comes from
    library: str  # that library's short name, as objdump prints it ("libtensorflow_framework")


@dataclass(frozen=True)
class Dylibs:
    install_name: str | None  # LC_ID_DYLIB: the name other images load it by
    loads: tuple[str, ...]  # install names it loads, re-exports included
    reexports: tuple[str, ...]  # install names whose every export it re-exports (LC_REEXPORT_DYLIB)


def parse_undefined(nm_output: str) -> Imports:
    """`llvm-nm -m --undefined-only` of a two-level-namespace image; raises on a line it does not understand."""
    bound, looked_up = {}, set()
    for line in filter(str.strip, nm_output.splitlines()):
        match = UNDEFINED.fullmatch(line)
        if match is None:
            raise ValueError(f"unexpected llvm-nm line: {line!r}")
        if match["library"]:
            bound[match["symbol"]] = match["library"]
        else:
            looked_up.add(match["symbol"])
    return Imports(bound, frozenset(looked_up))


def parse_exports(objdump_output: str) -> dict[str, ReExport | None]:
    """`llvm-objdump --macho --exports-trie`: each exported symbol, None if defined here, else where it comes from."""
    lines = objdump_output.splitlines()
    if "Exports trie:" not in lines:
        raise ValueError("llvm-objdump printed no exports trie")
    exports: dict[str, ReExport | None] = {}
    for line in filter(str.strip, lines[lines.index("Exports trie:") + 1 :]):
        match = EXPORT.fullmatch(line)
        if match is None:
            raise ValueError(f"unexpected exports-trie line: {line!r}")
        if match["library"]:
            exports[match["symbol"]] = ReExport(match["target"] or match["symbol"], match["library"])
        else:
            exports[match["symbol"]] = None
    return exports


def parse_dylibs(objdump_output: str) -> Dylibs:
    """The library names in `llvm-objdump --macho --private-headers` (its load commands)."""
    install_name, loads, reexports, command = None, [], [], None
    for line in objdump_output.splitlines():
        if match := LOAD_COMMAND.fullmatch(line):
            command = match["cmd"]
        elif (match := DYLIB_NAME.fullmatch(line)) and command == "LC_ID_DYLIB":
            install_name = match["name"]
        elif match and command in LOADS:
            loads.append(match["name"])
            if command == "LC_REEXPORT_DYLIB":
                reexports.append(match["name"])
    return Dylibs(install_name, tuple(loads), tuple(reexports))


def short_name(install_name: str) -> str:
    """How objdump names a library in a re-export: its file name up to the first dot (libtensorflow_cc.2.dylib →
    libtensorflow_cc); a framework's name (…/Security.framework/Versions/A/Security → Security)."""
    return Path(install_name).name.split(".")[0]


def is_library(path: Path) -> bool:
    return path.suffix in (".so", ".dylib") and path.is_file()


def install_name(nm_name: str, loads: tuple[str, ...]) -> str:
    """The install name llvm-nm means by `nm_name`: it prints a library's short name where it can guess one
    (libc++, CoreFoundation) and the whole install name otherwise (@rpath/_pywrap_tensorflow_internal.so)."""
    names = [name for name in loads if nm_name in (name, short_name(name))]
    if len(names) != 1:
        raise ValueError(f"llvm-nm's library {nm_name!r} is {len(names)} of the image's libraries {loads}")
    return names[0]


class Llvm:
    """llvm-nm and llvm-objdump, each file read once."""

    def __init__(self, nm: str, objdump: str):
        self.nm, self.objdump = nm, objdump
        self.imports = cache(lambda path: parse_undefined(self.run(self.nm, "-m", "--undefined-only", path)))
        self.exports = cache(lambda path: parse_exports(self.run(self.objdump, "--macho", "--exports-trie", path)))
        self.dylibs = cache(lambda path: parse_dylibs(self.run(self.objdump, "--macho", "--private-headers", path)))

    @staticmethod
    def run(*command: str | Path) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr.strip()}")
        return done.stdout


@dataclass(frozen=True)
class PluginCheck:
    """What a plugin needs from the libraries of the package tree it is installed in, and what it would not find."""

    bound: dict[str, list[str]]  # library file (relative to the tree) → symbols bound to it
    looked_up: list[str]  # symbols looked up that the tree's libraries must provide
    unmatched: list[str]  # install names the plugin loads that no library in the tree has
    missing_bound: list[str]
    missing_looked_up: list[str]

    def problems(self) -> list[str]:
        return [
            *(f"no library has the install name {name}" for name in self.unmatched),
            *(f"bound symbol not exported: {symbol}" for symbol in self.missing_bound),
            *(f"looked-up symbol not exported: {symbol}" for symbol in self.missing_looked_up),
        ]


class Site:
    """The Mach-O libraries of some packages in an installed tree (a macOS site-packages), as dyld sees them once
    the package that loads the plugin has loaded its own libraries."""

    def __init__(self, root: Path, llvm: Llvm, packages: tuple[str, ...]):
        self.root, self.llvm = root, llvm
        self.files = sorted(path for package in packages for path in (root / package).rglob("*") if is_library(path))

    def by_install_name(self, name: str) -> Path | None:
        """The library already loaded under this install name, as dyld matches one; None for none."""
        return next((path for path in self.files if self.llvm.dylibs(path).install_name == name), None)

    def by_file_name(self, name: str) -> Path | None:
        """The library whose file name the install name ends in (the file an @rpath search would look for)."""
        matches = [path for path in self.files if path.name == Path(name).name]
        if len(matches) > 1:
            raise ValueError(f"{len(matches)} files named {Path(name).name} under {self.root}")
        return matches[0] if matches else None

    def find(self, install_name: str) -> Path | None:
        return self.by_install_name(install_name) or self.by_file_name(install_name)

    def dependencies(self, binary: Path) -> list[Path]:
        """The tree's libraries that loading `binary` loads, directly or through others (not the system's)."""
        found: list[Path] = []
        todo = [binary]
        while todo:
            for name in self.llvm.dylibs(todo.pop()).loads:
                library = None if name.startswith(SYSTEM) else self.find(name)
                if library is not None and library not in found and library != binary:
                    found.append(library)
                    todo.append(library)
        return found

    def exports(self, library: Path, symbol: str, depth: int = 0) -> bool:
        """Whether dyld finds `symbol` in `library`: defined there, or re-exported from one of the tree's libraries
        that has it (a re-export into a macOS library cannot be followed here, so it counts as not found)."""
        if depth > 8:
            raise ValueError(f"re-export cycle for {symbol} at {library}")
        dylibs = self.llvm.dylibs(library)
        entry = self.llvm.exports(library).get(symbol, "absent")
        if entry is None:
            return True
        if isinstance(entry, ReExport):
            names = [name for name in dylibs.loads if short_name(name) == entry.library]
            source = self.find(names[0]) if names and not names[0].startswith(SYSTEM) else None
            return source is not None and self.exports(source, entry.symbol, depth + 1)
        reexported = (self.find(name) for name in dylibs.reexports if not name.startswith(SYSTEM))
        return any(source is not None and self.exports(source, symbol, depth + 1) for source in reexported)

    def check_plugin(self, plugin: Path, system_lookups: tuple[str, ...] = ()) -> PluginCheck:
        """Every symbol `plugin` binds to one of the tree's libraries must be exported by the library dyld matches to
        that install name; every symbol it looks up (but those starting with `system_lookups`, which macOS provides)
        by one of the libraries loading the plugin loads."""
        imports, loads = self.llvm.imports(plugin), self.llvm.dylibs(plugin).loads
        bound: dict[str, list[str]] = {}
        unmatched, missing_bound = [], []
        for symbol, nm_name in sorted(imports.bound.items()):
            name = install_name(nm_name, loads)
            if name.startswith(SYSTEM):
                continue
            library = self.by_install_name(name)
            if library is None and name not in unmatched:
                unmatched.append(name)  # dyld would not reuse a loaded library; checked against the file it names
            library = library or self.by_file_name(name)
            if library is None:
                missing_bound.append(symbol)
                continue
            bound.setdefault(str(library.relative_to(self.root)), []).append(symbol)
            if not self.exports(library, symbol):
                missing_bound.append(symbol)
        looked_up = sorted(symbol for symbol in imports.looked_up if not symbol.startswith(system_lookups))
        loaded = self.dependencies(plugin)
        missing_looked_up = [s for s in looked_up if not any(self.exports(library, s) for library in loaded)]
        return PluginCheck(bound, looked_up, unmatched, missing_bound, missing_looked_up)
