"""The campaign's own measurements, on maps whose answer is known: the FSC against a truth and
the low-pass the mask threshold is taken on."""

from __future__ import annotations

import numpy as np
import pytest

from relion_spot.relion.campaign import CampaignError, fsc_resolution, lowpassed

BOX, ANGPIX = 48, 2.0


def _blob(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(BOX, BOX, BOX)).astype(np.float32)


def test_a_map_against_itself_agrees_to_nyquist() -> None:
    volume = _blob()
    resolution, curve = fsc_resolution(volume, volume.copy(), ANGPIX)
    assert resolution == 2 * ANGPIX
    assert min(curve) > 0.999 and len(curve) == BOX // 2


@pytest.mark.parametrize("cutoff", [8.0, 12.0, 24.0])
def test_a_map_low_passed_and_then_noised_beyond_agrees_up_to_the_cutoff(cutoff: float) -> None:
    truth = _blob(1)
    kept = lowpassed(truth, ANGPIX, cutoff)
    beyond = _blob(2) - lowpassed(_blob(2), ANGPIX, cutoff)
    resolution, _ = fsc_resolution(kept + beyond, truth, ANGPIX)
    shell = BOX * ANGPIX / cutoff
    assert resolution == pytest.approx(BOX * ANGPIX / int(shell), rel=0.01)


def test_unrelated_maps_have_no_resolution_and_other_boxes_are_refused() -> None:
    resolution, curve = fsc_resolution(_blob(3), _blob(4), ANGPIX)
    assert resolution is None or resolution > BOX * ANGPIX / 3
    assert abs(curve[-1]) < 0.2
    with pytest.raises(CampaignError, match="not one cube"):
        fsc_resolution(_blob(3), _blob(4)[:-2], ANGPIX)
