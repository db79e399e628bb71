"""The paper's grid (padding x sharing x placement) is plotted with no two trials on one point, without flags."""
import itertools

import yaml

from lightning_convshare.sweep import SweepState, summarize
from lightning_convshare.sweep.summary import DEFAULT_AXES, plot_series

PARAMS = ["surgery.padding", "surgery.shared", "surgery.targets"]


def test_paper_grid_is_drawn_with_placement_on_x_a_line_per_padding_and_a_panel_per_sharing(tmp_path):
    state = SweepState.create(tmp_path / "s", {"name": "paper_grid", "axes": None})
    acc = {}
    for i, (padding, shared, targets) in enumerate(itertools.product(["valid", "same"], [True, False],
                                                                      [["attn"], ["mlp"], ["attn", "mlp"]])):
        trial = state.new_trial(dict(zip(PARAMS, (padding, shared, targets))))
        trial.status, trial.metrics = "finished", {"val/acc": 0.5 + i / 100, "val/attn/cka": 0.1 + i / 100}
        acc[(padding, shared, "[" + ", ".join(targets) + "]")] = 0.5 + i / 100
        state.trial_dir(trial).mkdir(parents=True)
        config = {"surgery": {"padding": padding, "shared": shared, "targets": targets, "kernel_size": 3},
                  "model": {"num_heads": 4}}
        (state.trial_dir(trial) / "config.yaml").write_text(yaml.safe_dump(config))
    state.save()
    series = plot_series(state, state.trials, "val/acc", PARAMS, dict(DEFAULT_AXES))
    assert series.keys == {"x": "surgery.targets", "lines": "surgery.padding", "panels": "surgery.shared"}
    assert series.xs == ["[attn]", "[mlp]", "[attn, mlp]"] and series.lines == ["valid", "same"]
    assert series.panels == [True, False]
    for panel, line in itertools.product(series.panels, series.lines):  # every trial is its own point
        assert series.points[panel][line] == [(x, acc[(line, panel, x)]) for x in series.xs]
    summary = summarize(state, {"name": "val/acc", "goal": "maximize"}, PARAMS)
    md = summary.markdown.read_text()
    assert "val/acc by surgery.targets (columns), surgery.shared and surgery.padding (rows):" in md
    assert "| shared | padding | [attn] | [mlp] | [attn, mlp] |" in md
    assert [p.name for p in summary.plots] == ["val_acc.png", "val_attn_cka.png"]
