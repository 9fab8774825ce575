"""Private helpers shared by the neuroml stages."""
