"""`serving bench` without the bench extra: it names the package and the extra to install instead of a
traceback; `make serve` installs the extra. The package is made missing for the import only (None in
sys.modules is how Python marks a module that cannot be imported); the bench modules that import it are
imported afresh."""

from __future__ import annotations

import re
import sys

import pytest

from serving.cli import main
from tests.helpers import ROOT


def test_serving_bench_without_hdrhistogram_names_the_extra_to_install(monkeypatch, capsys):
    for module in ("hdrh", "hdrh.histogram"):
        monkeypatch.setitem(sys.modules, module, None)
    for module in ("serving.tools.bench.run", "serving.tools.bench.load"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--url", "http://127.0.0.1:1/v1/models/m:predict", "--body", "request.json"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("serving bench needs the package hdrhistogram (module hdrh) of the bench "
                                       "extra: pip install 'serving-engine[bench]'\n")


def test_make_serve_installs_the_bench_extra_so_serving_bench_runs_beside_the_demo():
    match = re.search(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile sets no EXTRAS"
    assert "bench" in match.group(1).split(",")
