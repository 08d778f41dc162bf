"""The report folder and ``rockseg score`` through the CLI.

The numbers themselves are checked against NumPy and scikit-image in test_score.py, the CSV in test_document.py;
here we check that they reach the JSON and the HTML page unchanged, that the pictures are written (and only whole
folders appear), and that bad input ends with exit code 2 and one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.errors import InputError, OutputExistsError
from rockseg.metrics import euler_number, parse_report_slice, report, score_csv, score_volumes, write_report
from tests.metrics.references import parse_csv, two_phase_pair

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_zarr(path: Path, data: np.ndarray, chunks=(5, 6, 7), **attrs) -> Path:
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[...] = data
    array.attrs.update(attrs)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The report folder
# ---------------------------------------------------------------------------------------------------------------


def test_parse_report_slice():
    shape = (100, 50, 40)
    assert parse_report_slice(None, shape) == (0, 50)
    assert parse_report_slice("Y", shape) == (1, 25)
    assert parse_report_slice("x=39", shape) == (2, 39)
    crop = (slice(10, 20), slice(0, 50), slice(0, 40))
    assert parse_report_slice(None, shape, crop) == (0, 15)
    assert parse_report_slice(None, (30, 40)) is None  # a 2D image is drawn whole
    for text, match in [("w", "one of z, y, x"), ("z=a", "'a' is not a slice index"),
                        ("z=100", "slice 100 is outside the scored z range 0..99")]:
        with pytest.raises(InputError, match=match):
            parse_report_slice(text, shape)
    with pytest.raises(InputError, match="slice 5 is outside the scored z range 10..19"):
        parse_report_slice("z=5", shape, crop)
    with pytest.raises(InputError, match="2D image"):
        parse_report_slice("z", (30, 40))


def check_pngs(folder: Path, names: list[str]) -> None:
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 2000, name  # a picture, not an empty canvas


def test_report_with_truth_mask_and_per_slice(tmp_path):
    pred, truth = two_phase_pair()
    mask = np.ones(pred.shape, bool)
    mask[:, :2] = False
    names = {0: "pore", 1: "grain", 2: "clay"}
    doc = score_volumes(pred, truth, mask=mask, phases=names, ignore=[0], per_slice="z")
    out = tmp_path / "report"
    result = write_report(out, doc=doc, pred=pred, truth=truth, mask=mask, pred_name="pred.zarr",
                          truth_name="labels.zarr", mask_name="fov.zarr")
    pictures = ["euler.png", "fractions.png", "iou.png", "per_slice.png", "slice.png", "worst-slice.png"]
    assert result["files"] == sorted(pictures + ["index.html", "score.csv", "score.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left behind
    check_pngs(out, pictures)
    assert json.loads((out / "score.json").read_text()) == doc
    assert (out / "score.csv").read_text() == score_csv(doc)
    page = (out / "index.html").read_text()
    for name in pictures + ["score.json", "score.csv"]:
        assert f'"{name}"' in page, name
    for text in ["pred.zarr", "labels.zarr", "fov.zarr", f"voxels scored: {doc['voxels']}",
                 f"voxels outside the mask: {doc['voxels_outside_mask']}", f"{doc['mean_iou']:.4f}", "(without 0)",
                 f"{doc['accuracy']:.4f}", "0 pore (ignored)", "Per slice across z"]:
        assert text in page, text
    for phase in doc["phases"]:
        row = "".join(f"<td>{phase[k]:.4f}</td>" for k in ("iou", "dice", "precision", "recall"))
        assert row + f"<td>{phase['fraction_pred']:.4f}</td>" in page
        assert f"<td>{phase['euler_pred']}</td><td>{phase['euler_true']}</td></tr>" in page
    for row in doc["confusion"]:
        assert "".join(f"<td>{v}</td>" for v in row) + "</tr>" in page
    # the slice where the errors are: the lowest per-slice mean IoU, found independently here
    per = doc["per_slice"]
    worst = per["index"][int(np.nanargmin(np.array(per["mean_iou"], dtype=float)))]
    assert f"slice z = {worst}, the slice of lowest mean IoU" in page
    assert page.index('"slice.png"') < page.index('"worst-slice.png"') < page.index('"iou.png"')


def test_report_without_truth_of_a_zarr_crop(tmp_path):
    pred, _ = two_phase_pair()
    store = zarr.open_array(str(write_zarr(tmp_path / "pred.zarr", pred)), mode="r")
    crop = (slice(2, 10), slice(0, 14), slice(3, 16))
    doc = score_volumes(store, crop=crop)
    out = tmp_path / "report"
    write_report(out, doc=doc, pred=store, crop=crop, view=(2, 8))
    pictures = ["euler.png", "fractions.png", "slice.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(pictures + ["index.html", "score.csv", "score.json"])
    check_pngs(out, pictures)
    page = (out / "index.html").read_text()
    assert "region: 2:10,0:14,3:16" in page and "slice x = 8" in page and "mean IoU" not in page
    for phase in doc["phases"]:
        assert f"<td>{phase['fraction_pred']:.4f}</td><td>{phase['euler_pred']}</td></tr>" in page
    with pytest.raises(OutputExistsError, match="exists already"):
        write_report(out, doc=doc, pred=store)
    write_report(out, doc=doc, pred=store, overwrite=True)


def test_large_slices_are_read_with_a_stride(monkeypatch):
    monkeypatch.setattr(report, "MAX_PIXELS", 10)
    where, plane = report._plane((slice(0, 5), slice(3, 33), slice(0, 12)), (0, 4))
    assert plane == (4, slice(3, 33, 3), slice(0, 12, 3))
    assert where == "slice z = 4 (1 voxel in 3 along each axis)"
    where, plane = report._plane((slice(0, 8), slice(0, 9)), None)
    assert plane == (slice(0, 8, 1), slice(0, 9, 1)) and where == "the image"


def test_a_failed_report_leaves_nothing(tmp_path, monkeypatch):
    pred, truth = two_phase_pair()
    doc = score_volumes(pred, truth)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "draw_euler", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path / "report", doc=doc, pred=pred, truth=truth)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# rockseg score through the CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path):
    pred, truth = two_phase_pair()
    inside = np.ones(pred.shape, np.uint8)
    inside[:, :, :3] = 0
    return {
        "pred": pred, "truth": truth, "inside": inside.astype(bool), "dir": tmp_path,
        "p": str(write_zarr(tmp_path / "pred.zarr", pred)),
        "t": str(write_zarr(tmp_path / "labels.zarr", truth, chunks=(4, 4, 4))),
        "m": str(write_zarr(tmp_path / "fov.zarr", inside)),
    }


def test_cli_json_has_the_new_keys_and_equals_the_library(stores):
    args = ["score", stores["p"], stores["t"], "--json", "--mask", stores["m"], "--ignore", "0", "--ignore", "2",
            "--per-slice", "x", "--phases", "0=pore,1=grain,2=clay", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = score_volumes(stores["pred"], stores["truth"], mask=stores["inside"], ignore=[0, 2], per_slice="x",
                             phases={0: "pore", 1: "grain", 2: "clay"})
    assert doc == expected
    assert doc["ignore"] == [0, 2] and doc["mean_iou"] == doc["phases"][1]["iou"]
    assert doc["voxels"] == int(stores["inside"].sum())
    assert doc["per_slice"]["index"] == list(range(16)) and doc["per_slice"]["axis"] == "x"


def test_cli_csv(stores):
    result = runner.invoke(app, ["score", stores["p"], stores["t"], "--csv", "--connectivity", "1"])
    assert result.exit_code == 0, result.output
    expected = score_volumes(stores["pred"], stores["truth"], connectivity=1)
    assert result.stdout == score_csv(expected)
    rows = parse_csv(result.stdout)
    assert [int(r["euler_true"]) for r in rows] == [euler_number(stores["truth"] == k, connectivity=1) for k in range(3)]


def test_cli_table_and_report(stores):
    out = stores["dir"] / "report"
    result = runner.invoke(app, ["score", stores["p"], stores["t"], "--report", str(out), "--report-slice", "y=3",
                                 "--per-slice", "z", "--ignore", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "score.json").read_text())
    assert f"mean IoU {doc['mean_iou']:.4f} (* left out)" in result.stdout
    assert "per slice across z: 12 slices, 8-neighbourhood; mean [min, max]" in result.stdout
    assert f"wrote {out / 'index.html'}" in result.stdout
    assert "slice y = 3" in (out / "index.html").read_text()
    # A second run refuses to replace the report, before scoring; --overwrite replaces it.
    again = runner.invoke(app, ["score", stores["p"], "--report", str(out)])
    assert again.exit_code == 2 and "exists already" in again.stderr
    again = runner.invoke(app, ["score", stores["p"], "--report", str(out), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert not (out / "iou.png").exists()  # the new report is of the prediction alone


def bad_input_cases(s: dict) -> list[tuple[list[str], str]]:
    d = s["dir"]
    write_zarr(d / "short.zarr", s["truth"][:, :, :-1])
    write_zarr(d / "float.zarr", s["truth"].astype(np.float32))
    write_zarr(d / "wide.zarr", np.ones(s["truth"].shape[:2] + (17,), np.uint8))
    p, t = s["p"], s["t"]
    return [
        ([p, str(d / "short.zarr")], "short.zarr has shape (12, 14, 15) but " + p),
        ([p, str(d / "float.zarr")], "float.zarr has dtype float32 but labels must be integers"),
        ([p, t, "--phases", "0=pore,2=clay"], f"{p} has label 1 (in region"),
        ([p, t, "--phases", "0=pore,2=clay"], "--phases ...,1=NAME"),
        ([p, t, "--mask", str(d / "wide.zarr")], "wide.zarr has shape (12, 14, 17) but " + p),
        ([p, "--mask", str(d / "nothing.zarr")], "mask " + str(d / "nothing.zarr") + " does not exist"),
        ([p, "--json", "--csv"], "--json and --csv both print on stdout"),
        ([p, "--per-slice", "w"], "per-slice axis 'w' is not one of z, y, x"),
        ([p, "--ignore", "300"], "ignored label 300 is not an integer 0-255"),
        ([p, "--report", str(d / "r"), "--report-slice", "z=12"], "slice 12 is outside the scored z range 0..11"),
        ([p, "--report", str(d / "no" / "r")], "the folder of output"),
    ]


def test_cli_bad_input_exit_2_with_one_line(stores):
    for args, expected in bad_input_cases(stores):
        result = runner.invoke(app, ["score", *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rockseg score: error: "), (args, result.stderr)
        assert expected in lines[0], (args, lines[0])
        assert result.stdout == ""
    assert not (stores["dir"] / "r").exists()


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------------------------


def test_phase_colours_are_the_ome_zarr_label_colours(tmp_path):
    from rockseg.io.omezarr import write_image_metadata

    phases = [{"label": 0, "name": "pore"}, {"label": 2, "name": "clay"}, {"label": 9, "name": "pyrite"}]
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    ome = write_image_metadata(tmp_path / "g.zarr", ndim=3, levels=1, phases={p["label"]: p["name"] for p in phases})
    from_ome = {c["label-value"]: "#%02x%02x%02x" % tuple(c["rgba"][:3]) for c in ome["image-label"]["colors"]}
    assert report.phase_colours(phases) == from_ome


def _chromium() -> str:
    """The path of a headless-capable Chromium; installed with apt-get as root when missing, else the test skips."""
    import os
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is not installed and this user cannot install it (apt-get install chromium as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    if subprocess.run(cmd, capture_output=True, env=env, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        if subprocess.run(cmd, capture_output=True, env=env, timeout=900).returncode != 0:
            pytest.skip("Chromium is not installed and 'apt-get install chromium' failed (no network?)")
    return shutil.which("chromium")


_CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const seen = Array.from(document.images).map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0,
                                                      width: i.naturalWidth, shown: i.getBoundingClientRect().width}));
  const out = document.createElement("pre");
  out.id = "rockseg-check";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.slow
def test_report_in_headless_chromium_shows_every_picture(tmp_path):
    import html
    import re
    import shutil
    import subprocess

    browser = _chromium()
    pred, truth = two_phase_pair((24, 40, 48))
    pred[18:22, 5:30, 5:30] = 2  # the errors are far from the middle slice: the worst slice must show them
    doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain", 2: "clay"}, per_slice="z")
    out = tmp_path / "report"
    write_report(out, doc=doc, pred=pred, truth=truth)
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert "worst-slice.png" in pictures
    # a copy of the page that lists what the browser loaded (the report itself stays script-free)
    check = tmp_path / "check"
    shutil.copytree(out, check)
    (check / "index.html").write_text((out / "index.html").read_text().replace("</body>", _CHECK_SCRIPT))
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000", "--window-size=1280,2400"]
    dom = subprocess.run([*flags, "--dump-dom", (check / "index.html").as_uri()], capture_output=True, text=True,
                         timeout=120)
    found = re.search(r'<pre id="rockseg-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    assert sorted(s["src"] for s in seen) == pictures
    assert all(s["ok"] and s["width"] > 100 and s["shown"] > 100 for s in seen), seen
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", (out / "index.html").as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a page with pictures, not a blank or an error page
