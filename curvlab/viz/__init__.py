"""Pure figure builders and report rendering: results in, ``plotly.graph_objects.Figure`` out.

Needs the ``viz`` extra (plotly). Notebooks call these directly; the explorers in
:mod:`curvlab.widgets` wrap their output in a ``FigureWidget`` and update trace data.
"""

from curvlab.viz._course import (
    agreement_figure as agreement_figure,
)
from curvlab.viz._course import (
    batch_noise_figure as batch_noise_figure,
)
from curvlab.viz._course import (
    cost_bars_figure as cost_bars_figure,
)
from curvlab.viz._course import (
    forcing_stop as forcing_stop,
)
from curvlab.viz._course import (
    hvp_motion_figure as hvp_motion_figure,
)
from curvlab.viz._course import (
    lines_figure as lines_figure,
)
from curvlab.viz._course import (
    methods_error_figure as methods_error_figure,
)
from curvlab.viz._course import (
    minibatch_choices_figure as minibatch_choices_figure,
)
from curvlab.viz._course import (
    model_vs_loss_figure as model_vs_loss_figure,
)
from curvlab.viz._course import (
    quadratic_paths_figure as quadratic_paths_figure,
)
from curvlab.viz._course import (
    slope_curvature_figure as slope_curvature_figure,
)
from curvlab.viz._course import (
    spectra_side_by_side_figure as spectra_side_by_side_figure,
)
from curvlab.viz._course import (
    storage_figure as storage_figure,
)
from curvlab.viz._course import (
    truncated_cg_figure as truncated_cg_figure,
)
from curvlab.viz._figures import (
    COLORS as COLORS,
)
from curvlab.viz._figures import (
    FONT_FAMILY as FONT_FAMILY,
)
from curvlab.viz._figures import (
    HF_TRACES as HF_TRACES,
)
from curvlab.viz._figures import (
    LEGEND_STRIP as LEGEND_STRIP,
)
from curvlab.viz._figures import (
    PALETTE as PALETTE,
)
from curvlab.viz._figures import (
    apply_theme as apply_theme,
)
from curvlab.viz._figures import (
    arrow_trace as arrow_trace,
)
from curvlab.viz._figures import (
    cg_data as cg_data,
)
from curvlab.viz._figures import (
    cg_figure as cg_figure,
)
from curvlab.viz._figures import (
    contour_figure as contour_figure,
)
from curvlab.viz._figures import (
    contour_grid as contour_grid,
)
from curvlab.viz._figures import (
    density_data as density_data,
)
from curvlab.viz._figures import (
    density_figure as density_figure,
)
from curvlab.viz._figures import (
    directions_bar_figure as directions_bar_figure,
)
from curvlab.viz._figures import (
    fd_error_figure as fd_error_figure,
)
from curvlab.viz._figures import (
    hf_data as hf_data,
)
from curvlab.viz._figures import (
    hf_training_figure as hf_training_figure,
)
from curvlab.viz._figures import (
    polar_curvature_figure as polar_curvature_figure,
)
from curvlab.viz._figures import (
    ritz_data as ritz_data,
)
from curvlab.viz._figures import (
    ritz_figure as ritz_figure,
)
from curvlab.viz._figures import (
    slice_figure as slice_figure,
)
from curvlab.viz._figures import (
    spectrum_figure as spectrum_figure,
)
from curvlab.viz._figures import (
    update_figure as update_figure,
)
from curvlab.viz._report import (
    report_figure as report_figure,
)
from curvlab.viz._report import (
    report_html as report_html,
)
from curvlab.viz._report import (
    save_report as save_report,
)
from curvlab.viz._report import (
    sharpness_figure as sharpness_figure,
)
from curvlab.viz._sharpness import (
    EOS_TRACES as EOS_TRACES,
)
from curvlab.viz._sharpness import (
    edge_of_stability_data as edge_of_stability_data,
)
from curvlab.viz._sharpness import (
    edge_of_stability_figure as edge_of_stability_figure,
)

__all__ = [
    "COLORS",
    "PALETTE",
    "FONT_FAMILY",
    "LEGEND_STRIP",
    "apply_theme",
    "arrow_trace",
    "contour_grid",
    "contour_figure",
    "polar_curvature_figure",
    "fd_error_figure",
    "directions_bar_figure",
    "slice_figure",
    "update_figure",
    "ritz_data",
    "ritz_figure",
    "density_data",
    "density_figure",
    "spectrum_figure",
    "cg_data",
    "cg_figure",
    "HF_TRACES",
    "hf_data",
    "hf_training_figure",
    "report_figure",
    "report_html",
    "save_report",
    "sharpness_figure",
    "EOS_TRACES",
    "edge_of_stability_data",
    "edge_of_stability_figure",
    "agreement_figure",
    "cost_bars_figure",
    "hvp_motion_figure",
    "lines_figure",
    "methods_error_figure",
    "model_vs_loss_figure",
    "quadratic_paths_figure",
    "slope_curvature_figure",
    "spectra_side_by_side_figure",
    "storage_figure",
    "batch_noise_figure",
    "minibatch_choices_figure",
    "forcing_stop",
    "truncated_cg_figure",
]
