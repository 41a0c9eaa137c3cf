"""SkySense architecture in PyTorch: encoders, fusion, heads, registry and checkpoint loading."""
