"""Report templates, rendering and refinement."""
