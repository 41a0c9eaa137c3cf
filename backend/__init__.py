"""SkySense local backend: raster I/O, tiled inference, training, HTTP server and CLI."""
__version__ = "0.1.0"
