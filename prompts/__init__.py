"""Plain-text prompt templates with named fields, one file per task."""
