"""Data preparation and validation (issue 4): sources -> prepare -> validate-format."""
