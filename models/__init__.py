"""SkySense architecture in PyTorch: encoders, fusion, heads, registry and checkpoint loading.

Entry points: ``models.registry.create_model``, ``models.checkpoint.load_model_file`` /
``save_model_file`` / ``load_official_weights``, ``models.onnx_export``. See docs/api_models.md.
"""
