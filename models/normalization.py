"""Input normalisation constants of SkySense (per band, in the raster's native units).

HR: ImageNet statistics expressed in 0-255 units (8-bit RGB).
S2: Level-2A reflectance digital numbers (x10000), bands B2,B3,B4,B5,B6,B7,B8,B8A,B11,B12.
S1: backscatter in dB, bands VV, VH.
S2/S1 values are the ones the SkySense family normalises with (``modal_norm_dict`` of the
official SkySense++ code, which pre-trains from the SkySense weights).
"""
from __future__ import annotations

from typing import Dict, List

S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S1_BANDS = ("VV", "VH")

HR_MEAN = [123.675, 116.28, 103.53]
HR_STD = [58.395, 57.12, 57.375]

S2_MEAN = [884.29673756, 1144.16202635, 1297.47289228, 1624.90992062, 2194.6423161,
           2422.21248945, 2517.76053101, 2581.64687018, 2368.51236873, 1805.06846033]
S2_STD = [1155.15170768, 1183.6292542, 1368.11351514, 1370.265037, 1355.55390699,
          1416.51487101, 1474.78900051, 1439.3086061, 1455.52084939, 1343.48379601]

S1_MEAN = [-12.54847273, -20.19237134]
S1_STD = [5.25697717, 5.91150917]

NORMALIZATION: Dict[str, Dict[str, List[float]]] = {
    "hr": {"mean": HR_MEAN, "std": HR_STD},
    "s2": {"mean": S2_MEAN, "std": S2_STD},
    "s1": {"mean": S1_MEAN, "std": S1_STD},
}


def get_normalization(source: str, num_bands: int | None = None) -> Dict[str, List[float]]:
    """Mean/std lists for ``"hr"``, ``"s2"`` or ``"s1"`` (copies, safe to edit).

    For HR with more than 3 bands (e.g. RGB+NIR) the extra bands get the mean of the
    RGB statistics, which is what a model adapted from RGB weights expects.
    """
    if source not in NORMALIZATION:
        raise KeyError(f"unknown source {source!r}; expected one of {sorted(NORMALIZATION)}")
    mean, std = list(NORMALIZATION[source]["mean"]), list(NORMALIZATION[source]["std"])
    if num_bands is not None and num_bands != len(mean):
        if source != "hr" or num_bands < 1:
            raise ValueError(f"{source} expects {len(mean)} bands, got {num_bands}")
        extra_m, extra_s = sum(HR_MEAN) / 3, sum(HR_STD) / 3
        mean = (mean + [extra_m] * num_bands)[:num_bands]
        std = (std + [extra_s] * num_bands)[:num_bands]
    return {"mean": mean, "std": std}
