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
        trial = state.new_trial(dict(zip(PARAMS, (padding, shared, targets), strict=True)))
        trial.status, trial.metrics = "finished", {"val/acc": 0.5 + i / 100, "val/attn/cka": 0.1 + i / 100}
        acc[(padding, shared, "[" + ", ".join(targets) + "]")] = 0.5 + i / 100
        state.trial_dir(trial).mkdir(parents=True)
        config = {"surgery": {"padding": padding, "shared": shared, "targets": targets, "kernel_size": 3},
                  "model": {"num_heads": 4}}
        (state.trial_dir(trial) / "config.yaml").write_text(yaml.safe_dump(config))
        attention = state.run_dir(trial) / "attention"
        attention.mkdir(parents=True)
        rows = ["epoch,layer,cosine,distance,ref_distance"] + [f"{e},{layer},0.5,{i + layer + e},{9 - layer}"
                                                              for e in (0, 1) for layer in range(3)]
        (attention / "layers.csv").write_text("\n".join(rows) + "\n")
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
    assert [p.name for p in summary.plots] == ["val_acc.png", "val_attn_cka.png", "layers_distance.png",
                                               "layers_cosine.png"]
    # per layer, the last epoch of every trial, and the reference's own values
    table = md[md.index("attention distance per layer (last epoch):"):].splitlines()
    assert table[2] == "| trial | padding | shared | targets | layer 0 | layer 1 | layer 2 |"
    assert table[4] == "| t000 | valid | True | [attn] | 1.000 | 2.000 | 3.000 |"
    assert table[15] == "| t011 | same | False | [attn, mlp] | 12.000 | 13.000 | 14.000 |"
    assert table[16] == "| reference |  |  |  | 9.000 | 8.000 | 7.000 |"
    layers = (state.dir / "layers.csv").read_text().splitlines()
    assert layers[0] == "trial,surgery.padding,surgery.shared,surgery.targets,epoch,layer,cosine,distance,ref_distance"
    assert len(layers) == 1 + 12 * 3 and layers[1].startswith("t000,valid,True,[attn],1,0,0.5,1.0,9.0")
