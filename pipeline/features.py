"""AudioMAE's features (cache_tools.fbank, which both stages share) and its normalisation constants."""
from __future__ import annotations

from cache_tools.fbank import FBANK_PARAMS, NUM_MEL_BINS, fbank  # noqa: F401  (stage one's names for them)

# AudioMAE's normalisation constants (mean, std); the loader applies (x - mean) / (2 * std)
NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "spc1": (-6.845978, 5.5654526),
    "spc2": (-6.845978, 5.5654526),
    "custom": (-4.2677393, 4.5689974),   # your own data (prepare folder): AudioSet's, what pretraining used
}
