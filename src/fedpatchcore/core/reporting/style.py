"""How every figure draws what it shares with the others (the report's overlays, the explanation)."""

CONTOUR_COLOUR = "#00ff66"  # ground-truth outline, visible on images and on the jet colour map
