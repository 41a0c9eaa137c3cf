"""Processing provider: one algorithm per SkySense task (batch mode and graphical modeler ready)."""
