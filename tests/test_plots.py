"""Figures a paper would use (issue 22 item 11): certified accuracy drawn as the step function it is,
light optional bands in distinct colours, the envelope last (thin, dashed), imported logs labelled as
such and dash-dotted; real Parquet of an rscert-layout run and of the published logs imported."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.collections import PolyCollection

from rscert.analysis.aggregate import analyze
from rscert.analysis.import_logs import import_logs
from rscert.analysis.plots import BAND_ALPHA, STYLE, curves_figure
from tests.reference_data import COHEN2019

from .test_analysis_runs import certify_rows, write_run

LOGS = COHEN2019 / "data" / "certify"
PUBLISHED_IMAGENET_TEST = 5  # imagenet/resnet50/noise_*/test/sigma_* logs


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    import_logs([str(LOGS)], str(root / "published"))
    rows = certify_rows(40, "ours", dataset="imagenet", model="resnet50", sigma=0.5)
    write_run(root / "ours", rows)
    return analyze([str(root / "ours"), str(root / "published")])


def _figure(result, bands=True):
    with matplotlib.rc_context(STYLE):
        return curves_figure(result, "imagenet", "test", bands)


def test_curves_are_steps_in_distinct_colours_and_the_envelope_comes_last(result):
    fig = _figure(result)
    ax = fig.axes[0]
    *curves, envelope = ax.get_lines()
    assert len(curves) == 1 + PUBLISHED_IMAGENET_TEST  # ours and the published logs: one imagenet/test panel
    assert all(line.get_drawstyle() == "steps-post" for line in ax.get_lines())
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in curves}
    assert len(colours) == len(curves)
    assert envelope.get_label().startswith("envelope")
    assert envelope.get_linestyle() == "--" and envelope.get_linewidth() < min(c.get_linewidth() for c in curves)
    assert envelope.get_zorder() > max(c.get_zorder() for c in curves)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(curves) and all(b.get_alpha() == BAND_ALPHA <= 0.15 for b in bands)


def test_imported_logs_are_labelled_and_drawn_apart(result):
    ax = _figure(result).axes[0]
    labels = {line.get_label(): line for line in ax.get_lines()}
    imported = [text for text in labels if "imported log" in text]
    assert len(imported) == PUBLISHED_IMAGENET_TEST
    assert all(labels[text].get_linestyle() == "-." for text in imported)
    ours = [text for text in labels if "imported" not in text and not text.startswith("envelope")]
    assert len(ours) == 1 and labels[ours[0]].get_linestyle() == "-"


def test_bands_are_optional(result):
    ax = _figure(result, bands=False).axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
