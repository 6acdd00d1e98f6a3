"""Store configs, the connectors that read marketplaces, and the built-in presets."""
