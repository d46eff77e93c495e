"""Export: anomaly maps in the official AutoVI (16-bit PNG) or MVTec (TIFF) evaluation layout."""
