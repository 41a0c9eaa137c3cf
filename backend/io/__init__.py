"""Raster and vector I/O: checked opening, aligned windowed reads, tiling, writers, styles."""
import os

# GDAL's block cache defaults to 5% of RAM and only evicts when full, so a long streaming run would
# grow the process by up to that much. Reads here go strip by strip; a bounded cache is enough.
# Users can still choose their own value through the environment.
os.environ.setdefault("GDAL_CACHEMAX", "128")
