"""fusion_diffusers: the modulator cache for diffusers transformers.

Not implemented yet (tracked by the diffusers-integration issue); importing this package gives no API.
"""
