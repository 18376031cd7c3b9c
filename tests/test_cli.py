"""The command line as a surface: one error mapping for every command (same mistake, same exit
code; ``param`` shown as the command's flag; no tracebacks), a start-up that imports no torch, and
a library that prints nothing of its own."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import click
import pytest
from click.testing import CliRunner

from vfsearch.cli import error_line, flag_for, main
from vfsearch.errors import EXIT_CODES, BadParameter, VfsError


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_user_error(r, code: int, prefix: str = "error: "):
    assert r.exit_code == code, (r.exit_code, r.output)
    assert r.stderr.startswith(prefix), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line
    assert "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)  # mapped, not raised through


# -- start-up -------------------------------------------------------------------------------------


def _imported_modules(*args: str) -> set[str]:
    """Modules imported by ``python -X importtime -m vfsearch.cli ARGS``."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "vfsearch.cli", *args],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args", [("--help",), ("eval", "--help"), ("map", "--help")])
def test_help_does_not_import_torch(args):
    mods = _imported_modules(*args)
    assert "vfsearch.cli" in mods
    heavy = {m for m in mods if m.split(".")[0] in ("torch", "numpy", "zarr", "PIL")}
    assert not heavy, sorted(heavy)[:10]


def test_every_command_is_listed():
    r = run("--help")
    assert r.exit_code == 0
    for name in ("index", "layers", "info", "search", "explain", "serve", "demo", "bench", "eval",
                 "map"):
        assert f"  {name} " in r.output


def test_cli_constants_agree_with_the_library():
    from vfsearch import embed, evaluate
    from vfsearch.cli import eval as eval_cli
    from vfsearch.cli import map as map_cli

    assert eval_cli.PROTOCOLS == evaluate.PROTOCOLS
    assert eval_cli.DEFAULT_LOCALIZE_LAYERS == evaluate.DEFAULT_LOCALIZE_LAYERS
    assert map_cli.METHODS == embed.METHODS


# -- param rendered as the running command's flag -------------------------------------------------


@click.command()
@click.option("--layer", "-l", "layers", multiple=True)
@click.option("--image-root")
@click.option("--p", "keep_p")
@click.argument("cache")
def _demo(layers, image_root, keep_p, cache):
    pass


def test_flag_for_finds_the_option_by_name_or_by_flag():
    assert flag_for(_demo, "layers") == "--layer"  # the option's name (dest)
    assert flag_for(_demo, "layer") == "--layer"  # the library keyword spelled as the flag
    assert flag_for(_demo, "image_root") == "--image-root"
    assert flag_for(_demo, "p") == "--p"
    assert flag_for(_demo, "cache") is None  # an argument, not a flag
    assert flag_for(_demo, "dtype") is None
    assert flag_for(None, "layer") is None and flag_for(_demo, None) is None


def test_error_line_names_the_flag_or_falls_back_to_the_message():
    e = BadParameter("no layer given and the model has no default layer", param="layers")
    assert error_line(e, _demo) == ("error: --layer: no layer given and the model has no default "
                                    "layer")
    assert error_line(BadParameter("bad", param="dtype"), _demo) == "error: bad"
    assert error_line(VfsError("plain"), _demo) == "error: plain"
    assert error_line(e) == "error: no layer given and the model has no default layer"


# -- the same mistake, the same exit code, in every command ----------------------------------------


def test_missing_cache_is_exit_3_everywhere(tmp_path):
    none = str(tmp_path / "none")
    for args in (["info", none], ["search", none, "-i", "0", "--whole"],
                 ["explain", none, "-i", "0", "--whole", "-r", "1"],
                 ["eval", "labels", none, "--out", str(tmp_path / "ev")], ["map", none],
                 ["serve", none]):
        assert_user_error(run(*args), 3)
    assert EXIT_CODES[3].startswith("cache")


def test_unknown_layer_is_exit_2_with_the_flag_everywhere(small_cache, tmp_path):
    c = str(small_cache.path)
    for args in (["search", c, "-i", "0", "--whole", "--layer", "nope"],
                 ["explain", c, "-i", "0", "--whole", "-r", "1", "--layer", "nope"],
                 ["eval", "labels", c, "--layer", "nope", "--out", str(tmp_path / "ev")],
                 ["map", c, "--layer", "nope", "--no-atlas", "-q"]):
        r = run(*args)
        assert_user_error(r, 2, "error: --layer: ")
        assert "nope" in r.stderr


def test_bad_box_is_exit_2_with_the_flag_in_search_and_explain(small_cache):
    c = str(small_cache.path)
    for args in (["search", c, "-i", "0", "--box", "1,2"],
                 ["explain", c, "-i", "0", "--box", "1,2", "-r", "1"]):
        r = run(*args)
        assert_user_error(r, 2, "error: --box: ")
        assert "'1,2'" in r.stderr


def test_bad_values_name_their_flags(small_cache, tmp_path):
    c = str(small_cache.path)
    assert_user_error(run("search", c, "-i", "0", "--whole", "--memory", "lots"), 2,
                      "error: --memory: ")
    assert_user_error(run("bench", "--sizes", "ten"), 2, "error: --sizes: ")
    assert_user_error(run("eval", "localize", str(tmp_path), "--out", str(tmp_path / "e")), 2,
                      "error: --work: ")
    assert_user_error(run("eval", "labels", c, "--work", str(tmp_path)), 2, "error: --work: ")
    assert_user_error(run("eval", "labels", c, "--model", "efficientnet-lite0"), 2,
                      "error: --model: only localize indexes images")
    r = run("eval", "localize", str(tmp_path), "--work", str(tmp_path / "w"), "--model", "nonet")
    assert_user_error(r, 2, "error: ")
    assert "nonet" in r.stderr and not (tmp_path / "w").exists()


def test_eval_localize_passes_the_model_and_its_default_layer(tmp_path, monkeypatch):
    """--model/--weights/--input-size reach the protocol as a loaded model, and without --layer
    the model's own default layer is evaluated."""
    from click.testing import CliRunner

    import vfsearch.evaluate as ev
    from vfsearch.cli import main

    seen = {}

    def fake(images, work, **kw):
        seen.update(kw)
        raise ev.EvalError("stop here")

    monkeypatch.setattr(ev, "run_localize", fake)
    r = CliRunner().invoke(main, ["eval", "localize", str(tmp_path), "--work", str(tmp_path / "w"),
                                  "--model", "efficientnet-lite0", "--input-size", "192"])
    assert r.exit_code == 2 and "stop here" in r.output
    assert seen["model"].name == "efficientnet-lite0" and seen["model"].transform.size == 192
    assert seen["layers"] == [seen["model"].default_layer]


def test_missing_weights_name_the_weights_flag():
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    r = run("layers", "torchvision:resnet50")  # no local weights: no download, a clear error
    assert_user_error(r, 2, "error: --weights: ")
    assert "--weights FILE" not in r.stderr  # the message itself names no flag


def test_index_refuses_a_directory_that_is_not_a_cache(tmp_path, sample_dir):
    out = tmp_path / "full"
    out.mkdir()
    (out / "something.txt").write_text("x")
    r = run("index", str(sample_dir), "--out", str(out), "-q", "--workers", "0")
    assert_user_error(r, 3, "error: --out: ")


def test_cuda_without_a_gpu_is_exit_5(tmp_path, sample_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run("index", str(sample_dir), "--out", str(tmp_path / "c"), "--device", "cuda", "-q")
    assert_user_error(r, 5, "error: --device: ")


def test_usage_errors_keep_clicks_exit_code_2(small_cache):
    c = str(small_cache.path)
    for args in (["search", c], ["index", "somewhere"], ["eval", "nonsense", c],
                 ["search", c, "-i", "0", "-k", "0"], ["nonsense"]):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and "Usage:" in r.stderr


def test_ctrl_c_is_exit_130_with_a_hint(monkeypatch, tmp_path):
    import vfsearch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vfsearch, "open_cache", interrupted)
    r = run("info", str(tmp_path))
    assert r.exit_code == 130 and "run the same command again" in r.stderr
    assert "Traceback" not in r.output


def test_python_m_vfsearch_cli_maps_errors_too(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vfsearch.cli", "info", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 3 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert p.stdout == ""


# -- the library prints nothing of its own ---------------------------------------------------------


def test_index_says_what_it_does_through_log_only(tmp_path, sample_dir, model, capfd):
    from vfsearch import index

    src = sample_dir / "cat"
    index(src, tmp_path / "a", model=model, layers=["blocks.15"], workers=0, progress=False)
    assert capfd.readouterr() == ("", "")
    lines = []
    index(src, tmp_path / "b", model=model, layers=["blocks.15"], workers=0, progress=False,
          log=lines.append)
    assert capfd.readouterr() == ("", "")
    assert len(lines) == 1 and "images to index with efficientnet-lite0 [blocks.15]" in lines[0]


def test_index_command_prints_the_start_line_on_stderr(tmp_path, sample_dir):
    src = str(sample_dir / "cat")
    r = run("index", src, "--out", str(tmp_path / "c"), "--layer", "blocks.15", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("vfsearch: 3 of 3 images to index")
    assert r.stdout.startswith("indexed 3 images")
    q = run("index", src, "--out", str(tmp_path / "d"), "--layer", "blocks.15", "--workers", "0",
            "-q")
    assert q.exit_code == 0 and q.stderr == ""


def test_loading_models_in_threads_keeps_other_threads_output(monkeypatch):
    """Nothing swaps the process-wide ``sys.stdout`` to hide the model wheel's banner: what another
    thread prints meanwhile all arrives, and the banner does not."""
    from vfsearch.models import load_model

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    stop = threading.Event()
    printed = []

    def printer():
        i = 0
        while not stop.is_set():
            print(f"line {i}")
            i += 1
            time.sleep(0.0005)
        printed.append(i)

    def loader():
        for _ in range(2):
            load_model("efficientnet-lite0")

    threads = [threading.Thread(target=loader) for _ in range(2)]
    p = threading.Thread(target=printer)
    p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    p.join()
    assert sys.stdout is buf
    lines = buf.getvalue().splitlines()
    assert lines == [f"line {i}" for i in range(printed[0])]
    assert printed[0] > 10
