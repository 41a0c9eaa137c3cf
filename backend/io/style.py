"""QGIS QML styles: paletted class rasters and categorized class polygons, with names and colours."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence
from xml.sax.saxutils import quoteattr

from backend.errors import OutputError
from backend.io.atomic import describe_os_error
from backend.io.writer import hex_to_rgba

__all__ = ["raster_qml", "vector_qml", "write_qml"]

_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def raster_qml(classes: Sequence[dict], band: int = 1, opacity: float = 1.0) -> str:
    """Paletted renderer listing every class (value, colour, label); nodata stays transparent."""
    entries = []
    for c in classes:
        r, g, b, a = hex_to_rgba(c["color"])
        entries.append(f'        <paletteEntry value="{int(c["value"])}" color="#{r:02x}{g:02x}{b:02x}" '
                       f'label={quoteattr(str(c["name"]))} alpha="{a}"/>')
    palette = "\n".join(entries)
    return (_HEADER +
            '<qgis version="3.22.0" styleCategories="Symbology">\n'
            '  <pipe>\n'
            f'    <rasterrenderer type="paletted" band="{band}" opacity="{opacity}" alphaBand="-1" nodataColor="">\n'
            '      <rasterTransparency/>\n'
            '      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent>'
            '<statAccuracy>Estimated</statAccuracy><cumulativeCutLower>0.02</cumulativeCutLower>'
            '<cumulativeCutUpper>0.98</cumulativeCutUpper><stdDevFactor>2</stdDevFactor></minMaxOrigin>\n'
            '      <colorPalette>\n'
            f'{palette}\n'
            '      </colorPalette>\n'
            '    </rasterrenderer>\n'
            '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
            '    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" colorizeStrength="100"/>\n'
            '    <rasterresampler maxOversampling="2"/>\n'
            '    <resamplingStage>resamplingFilter</resamplingStage>\n'
            '  </pipe>\n'
            '  <blendMode>0</blendMode>\n'
            '</qgis>\n')


def _fill_symbol(name: str, color: str, outline: bool, fill_alpha: int) -> str:
    r, g, b, _ = hex_to_rgba(color)
    rgba = f"{r},{g},{b},{fill_alpha}"
    props = {"color": rgba, "style": "solid", "outline_color": "35,35,35,255" if outline else "0,0,0,0",
             "outline_style": "solid" if outline else "no", "outline_width": "0.2", "outline_width_unit": "MM",
             "joinstyle": "bevel", "offset": "0,0", "offset_unit": "MM"}
    options = "\n".join(f'            <Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
    legacy = "\n".join(f'          <prop k="{k}" v="{v}"/>' for k, v in props.items())
    return (f'      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            '        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            '          <Option type="Map">\n'
            f'{options}\n'
            '          </Option>\n'
            f'{legacy}\n'
            '        </layer>\n'
            '      </symbol>\n')


def vector_qml(classes: Sequence[dict], field: str = "class_id", outline: bool = False,
               fill_alpha: int = 200) -> str:
    """Categorized fill renderer on `field`, one category per class."""
    categories = "\n".join(
        f'      <category symbol="{k}" value="{int(c["value"])}" label={quoteattr(str(c["name"]))} render="true"/>'
        for k, c in enumerate(classes))
    symbols = "".join(_fill_symbol(str(k), c["color"], outline, fill_alpha) for k, c in enumerate(classes))
    return (_HEADER +
            '<qgis version="3.22.0" styleCategories="Symbology">\n'
            f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
            'enableorderby="0" forceraster="0">\n'
            '    <categories>\n'
            f'{categories}\n'
            '    </categories>\n'
            '    <symbols>\n'
            f'{symbols}'
            '    </symbols>\n'
            '  </renderer-v2>\n'
            '  <blendMode>0</blendMode>\n'
            '  <featureBlendMode>0</featureBlendMode>\n'
            '  <layerOpacity>1</layerOpacity>\n'
            '</qgis>\n')


def write_qml(path, text: str, final_name: Optional[Path] = None) -> Path:
    """Write a QML file (use a temporary path from AtomicOutputs for atomicity)."""
    path = Path(path)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"could not write {final_name or path}: {describe_os_error(exc)}") from None
    return path
