"""tests/macho.py on LLVM's output as it prints it for macOS libraries: parsed exactly, and each way a plugin can
miss a symbol is caught (the Mac install check in test_mac_install.py relies on it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.macho import Dylibs, Imports, ReExport, Site, parse_dylibs, parse_exports, parse_undefined

NM = """
                 (undefined) external _TF_NewStatus (from @rpath/_pywrap_tensorflow_internal.so)
                 (undefined) external __ZdlPv (from libc++)
                 (undefined) weak external _weak_one (from libc++)
                 (undefined) external _TF_GetStream (dynamically looked up)
"""
EXPORTS = """lib.dylib:

Exports trie:
0x002D6CE0  _EagerTensorType
0x00000F70  _myWeak [weak_def]
[re-export] _TF_NewStatus (from libtensorflow_cc)
[re-export] __ZN1a1bEv [weak_def] (from libtensorflow_cc)
[re-export] _myfree (_free from libSystem)
"""
HEADERS = """Load command 3
          cmd LC_ID_DYLIB
      cmdsize 64
         name @rpath/libfoo.2.dylib (offset 24)
Load command 4
          cmd LC_LOAD_DYLIB
         name /usr/lib/libc++.1.dylib (offset 24)
Load command 5
          cmd LC_REEXPORT_DYLIB
         name @rpath/libbar.dylib (offset 24)
Load command 6
          cmd LC_RPATH
         path @loader_path/ (offset 12)
"""


def test_undefined_symbols_split_into_bound_and_looked_up():
    imports = parse_undefined(NM)
    assert imports.bound == {
        "_TF_NewStatus": "@rpath/_pywrap_tensorflow_internal.so",
        "__ZdlPv": "libc++",
        "_weak_one": "libc++",
    }
    assert imports.looked_up == {"_TF_GetStream"}
    with pytest.raises(ValueError, match="unexpected llvm-nm line"):
        parse_undefined("0000000000001234 (__TEXT,__text) external _defined_here")


def test_exports_keep_where_each_re_export_comes_from():
    assert parse_exports(EXPORTS) == {
        "_EagerTensorType": None,
        "_myWeak": None,
        "_TF_NewStatus": ReExport("_TF_NewStatus", "libtensorflow_cc"),
        "__ZN1a1bEv": ReExport("__ZN1a1bEv", "libtensorflow_cc"),
        "_myfree": ReExport("_free", "libSystem"),
    }
    with pytest.raises(ValueError, match="no exports trie"):
        parse_exports("lib.dylib:\n")


def test_load_commands_give_the_install_name_and_what_it_loads():
    assert parse_dylibs(HEADERS) == Dylibs(
        "@rpath/libfoo.2.dylib", ("/usr/lib/libc++.1.dylib", "@rpath/libbar.dylib"), ("@rpath/libbar.dylib",)
    )


def fake_site(root: Path, libraries: dict[str, tuple[Dylibs, dict]], plugin: Imports, plugin_loads: tuple) -> Site:
    """A Site over empty files, with what LLVM would say about each given in place of running it."""
    dylibs, exports = {}, {}
    for name, (library_dylibs, library_exports) in libraries.items():
        (root / "tf" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "tf" / name).touch()
        dylibs[root / "tf" / name], exports[root / "tf" / name] = library_dylibs, library_exports
    dylibs[root / "plugin.dylib"] = Dylibs(None, plugin_loads, ())
    llvm = SimpleNamespace(imports=lambda path: plugin, dylibs=dylibs.__getitem__, exports=exports.__getitem__)
    return Site(root, llvm, ("tf",))


PYWRAP = "@rpath/_pywrap.so"
CC = "@rpath/libcc.2.dylib"
FROM_CC = ReExport("_TF_A", "libcc")


def two_libraries(cc_exports: dict, reexport: ReExport = FROM_CC) -> dict:
    """_pywrap.so re-exports _TF_A from libcc.2.dylib (as TensorFlow 2.19's _pywrap_tensorflow_internal.so does)."""
    return {
        "python/_pywrap.so": (Dylibs(PYWRAP, (CC, "/usr/lib/libc++.1.dylib"), ()), {"_TF_A": reexport}),
        "libcc.2.dylib": (Dylibs(CC, ("/usr/lib/libSystem.B.dylib",), ()), cc_exports),
    }


def test_a_bound_symbol_counts_when_its_re_export_leads_to_a_definition(tmp_path):
    plugin = Imports({"_TF_A": PYWRAP, "__ZdlPv": "libc++"}, frozenset({"_TF_B", "_objc_msgSend"}))
    site = fake_site(
        tmp_path, two_libraries({"_TF_A": None, "_TF_B": None}), plugin, (PYWRAP, "/usr/lib/libc++.1.dylib")
    )
    check = site.check_plugin(tmp_path / "plugin.dylib", ("_objc_",))
    assert check.problems() == []
    assert check.bound == {"tf/python/_pywrap.so": ["_TF_A"]} and check.looked_up == ["_TF_B"]


@pytest.mark.parametrize(
    ("cc_exports", "reexport", "plugin_name", "problem"),
    [
        ({}, FROM_CC, PYWRAP, "bound symbol not exported: _TF_A"),  # re-export leads nowhere
        ({"_TF_A": None}, ReExport("_TF_A", "libSystem"), PYWRAP, "bound symbol not exported: _TF_A"),  # into macOS
        ({"_TF_A": None}, FROM_CC, "@rpath/_pywrap.so.old", "no library has the install name"),
    ],
    ids=["re-export-to-nothing", "re-export-into-macos", "install-name-moved"],
)
def test_each_way_to_miss_a_bound_symbol_is_caught(tmp_path, cc_exports, reexport, plugin_name, problem):
    plugin = Imports({"_TF_A": plugin_name}, frozenset())
    site = fake_site(tmp_path, two_libraries(cc_exports | {"_TF_B": None}, reexport), plugin, (plugin_name,))
    problems = site.check_plugin(tmp_path / "plugin.dylib").problems()
    assert any(line.startswith(problem) for line in problems), problems


def test_a_looked_up_symbol_no_loaded_library_exports_is_caught(tmp_path):
    plugin = Imports({"_TF_A": PYWRAP}, frozenset({"_TF_B", "_TF_Gone"}))
    site = fake_site(tmp_path, two_libraries({"_TF_A": None, "_TF_B": None}), plugin, (PYWRAP,))
    assert site.check_plugin(tmp_path / "plugin.dylib").problems() == ["looked-up symbol not exported: _TF_Gone"]
